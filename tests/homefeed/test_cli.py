import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from homefeed.cli import app
from models import MODEL_NAMES

runner = CliRunner()
HOMEFEED = str(Path(sys.executable).with_name("homefeed"))


def test_installed_console_script_lists_the_commands():
    out = subprocess.run([HOMEFEED, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("generate", "import-kuairand", "build-instances", "validate", "models", "train", "evaluate", "promote", "rollback", "registry", "run"):
        assert command in out


def test_models_lists_every_model_name():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert result.output.split() == list(MODEL_NAMES)


def test_bad_config_exits_non_zero_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: many\n")
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "raw"), "--config", str(bad)])
    assert result.exit_code == 2
    assert "train.epochs" in result.output
    assert not (tmp_path / "raw").exists()


def test_unknown_env_key_exits_non_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMEFEED__SIMULATOR__IMPRESSION", "5")
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "raw")])
    assert result.exit_code == 2 and "simulator.impression" in result.output


def test_generate_writes_the_contract(tmp_path):
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "raw"), "--impressions", "2000", "--days", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "raw" / "_SUCCESS").exists()
