"""docker/compose.yaml refers only to things that exist; secrets stay out of the repository.

Docker's daemon does not run on our machines, so the stack itself is not started here.
"""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from homefeed.cli import app

DOCKER = Path(__file__).resolve().parents[2] / "docker"
REPO = DOCKER.parent
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
ENV_EXAMPLE = dict(
    line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines() if line and not line.startswith("#")
)


def test_the_stack_has_every_part_the_platform_needs():
    assert {"postgres", "minio", "mlflow", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "spark-master", "spark-worker", "redis", "serve", "trainer"} <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_builds_and_files_exist(name):
    service = SERVICES[name]
    if "build" in service:
        context = (DOCKER / service["build"]["context"]).resolve()
        dockerfile = context / service["build"]["dockerfile"]
        assert dockerfile.exists(), dockerfile
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (context / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"
        else:
            assert source in COMPOSE["volumes"], f"{name} mounts undeclared volume {source}"
    for env_file in service.get("env_file", []):
        assert env_file == ".env", f"{name}: one env file for everything"


def test_every_variable_the_stack_reads_is_in_the_env_example():
    text = (DOCKER / "compose.yaml").read_text()
    used = set(re.findall(r"\$\$?\{([A-Z_][A-Z0-9_]*)", text))
    assert used and used <= set(ENV_EXAMPLE), sorted(used - set(ENV_EXAMPLE))


def test_no_secret_is_committed():
    for key, value in ENV_EXAMPLE.items():
        if re.search(r"PASSWORD|SECRET", key):
            assert value == "", f"{key} has a value in .env.example"
        assert "CHANGE_ME" in value or not re.search(r"://[^:/]+:[^@]+@", value), f"{key} embeds a password"
    assert "docker/.env" in (REPO / ".gitignore").read_text().splitlines()


def test_homefeed_and_airflow_commands_exist():
    platform_commands = [s["command"] for s in SERVICES.values() if s.get("image") == "homefeed:latest" and "entrypoint" not in s]
    assert platform_commands, "some service runs the homefeed CLI"
    for command in platform_commands:
        result = CliRunner().invoke(app, [command[0], "--help"])
        assert result.exit_code == 0, f"homefeed {command[0]}: {result.output}"
    airflow_help = subprocess.run([str(Path(sys.executable).with_name("airflow")), "--help"], capture_output=True, text=True, check=True).stdout
    for name, service in SERVICES.items():
        if service.get("entrypoint") == ["airflow"]:
            assert re.search(rf"^\s+{service['command'][0]}\s", airflow_help, re.M), f"{name}: airflow {service['command'][0]}"


def test_spark_services_start_real_spark_classes():
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    core = next(jars.glob("spark-core_*.jar"))
    listing = set(zipfile.ZipFile(core).namelist())
    for name in ("spark-master", "spark-worker"):
        cls = SERVICES[name]["command"][1]
        assert SERVICES[name]["command"][0] == "spark-class"
        assert cls.replace(".", "/") + ".class" in listing, cls


@pytest.mark.skipif(
    shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed here",
)
def test_docker_compose_config_parses(tmp_path):
    env = DOCKER / ".env"
    created = not env.exists()
    if created:
        env.write_text((DOCKER / ".env.example").read_text())
    try:
        subprocess.run(["docker", "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"], check=True)
    finally:
        if created:
            env.unlink()
