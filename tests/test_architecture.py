"""The layers of docs/architecture.md, checked on the import graph (every import, function-local
ones included) with the standard library's ast, so the rule cannot rot."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top, as docs/architecture.md lists them. A module may import its own layer and those below.
LAYERS = {
    "foundation": ["homefeed", "homefeed.errors", "homefeed.schema", "homefeed.config", "homefeed.storage", "homefeed.progress",
                   "homefeed.contract", "homefeed.metrics", "homefeed.holdout", "homefeed.segments", "homefeed.processes",
                   "homefeed.s3", "homefeed.local_s3", "homefeed.local_redis", "homefeed.spark", "homefeed.orchestration",
                   "homefeed.arms"],
    "data": ["homefeed.data", "homefeed.features", "homefeed.simulate", "homefeed.kuairand", "homefeed.sequence_store",
             "homefeed.event_log", "expectations"],
    "models": ["models"],
    "engines": ["jobs", "homefeed.validation", "homefeed.drift", "homefeed.train", "homefeed.evaluate", "homefeed.gates",
                "homefeed.registry", "homefeed.experiments", "homefeed.readout"],
    "workflows": ["homefeed.pipeline", "homefeed.report", "homefeed.monitor", "homefeed.compare", "homefeed.loop",
                  "homefeed.serving", "homefeed.serving.service", "homefeed.serving.metrics", "homefeed.experiment_sim"],
    "interfaces": ["homefeed.cli", "homefeed.local_platform", "homefeed.airflow_links", "homefeed.stack", "homefeed.serving.app", "dags"],
}
PACKAGES = ("homefeed", "models", "jobs", "expectations", "dags")


def layer_of(module: str) -> int | None:
    """The layer of the longest listed prefix of ``module``."""
    best = None
    for rank, prefixes in enumerate(LAYERS.values()):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    return None if best is None else best[0]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def upward_imports() -> list[str]:
    names = list(LAYERS)
    found = []
    for module, path in modules().items():
        mine = layer_of(module)
        for imported in imports(path):
            theirs = layer_of(imported)
            if mine is not None and theirs is not None and theirs > mine:
                found.append(f"{module} ({names[mine]}) imports {imported} ({names[theirs]})")
    return sorted(found)


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The negative case: a foundation module importing the CLI is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from homefeed.cli import app\n")
    monkeypatch.setattr(f"{__name__}.modules", lambda: {"homefeed.storage": bad})
    assert upward_imports() == ["homefeed.storage (foundation) imports homefeed.cli (interfaces)",
                                "homefeed.storage (foundation) imports homefeed.cli.app (interfaces)"]


def test_the_documented_layers_are_these():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for layer, prefixes in LAYERS.items():
        assert f"**{layer}**" in text, layer
        for prefix in prefixes:
            assert f"`{prefix}`" in text, prefix


def mlflow_clients_outside_the_registry() -> list[str]:
    """Calls of ``registry.client(…)`` (the raw MlflowClient) and MlflowClient holders outside
    homefeed/registry.py: every MLflow read and write is a named verb of the registry."""
    found = []
    for module, path in modules().items():
        if module == "homefeed.registry":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "client" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "registry":
                found.append(f"{module}:{node.lineno} calls registry.client")
            elif isinstance(node, ast.Name) and node.id == "MlflowClient":
                found.append(f"{module}:{node.lineno} holds an MlflowClient")
    return found


def test_mlflow_is_reached_through_registry_verbs_only(tmp_path, monkeypatch):
    assert mlflow_clients_outside_the_registry() == []
    bad = tmp_path / "bad.py"  # the negative case
    bad.write_text("from homefeed import registry\n\ndef f(cfg):\n    registry.client(cfg).set_tag('r', 'k', 'v')\n")
    monkeypatch.setattr(f"{__name__}.modules", lambda: {"homefeed.pipeline": bad})
    assert mlflow_clients_outside_the_registry() == ["homefeed.pipeline:4 calls registry.client"]


def test_the_cli_is_a_package_of_small_command_groups():
    """Issue 36: cli.py had grown to 704 lines; one module per command group, none over 300."""
    sizes = {path.name: len(path.read_text().splitlines()) for path in (ROOT / "homefeed" / "cli").glob("*.py")}
    assert {"data.py", "training.py", "release.py", "experiments.py", "serving.py", "local.py"} <= set(sizes)
    assert {name: lines for name, lines in sizes.items() if lines > 300} == {}
    assert not (ROOT / "homefeed" / "cli.py").exists()


def test_the_command_names_are_unchanged():
    from homefeed.cli import app
    import typer.main

    group = typer.main.get_command(app)
    names = {name: sorted(getattr(command, "commands", {}) or []) for name, command in group.commands.items()}
    assert names == {
        "generate": [], "import-kuairand": [], "build-instances": [], "config": [], "validate": [], "instances": ["show"],
        "models": [], "train": [], "evaluate": [], "compare": [], "monitor": [], "simulate-loop": [], "score-pool": [],
        "promote": [], "rollback": [], "registry": ["history", "show"], "simulate-experiment": [],
        "experiment": ["readout", "start", "status", "stop"], "serve": [], "sequences": ["load", "show"],
        "airflow": [], "backfill": [], "run": [], "stack": ["down", "env", "status", "up"],
    }


def long_functions(limit: int = 80) -> list[str]:
    found = []
    for package in ("homefeed", "jobs", "models"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return found


def test_no_function_is_longer_than_a_reader_can_hold():
    """Issue 36: train_worker (130 lines), create_app (103) and compare (85) split into named steps."""
    assert long_functions() == []
    assert long_functions(limit=60)  # the check sees long functions at all
