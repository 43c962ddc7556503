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
    "data": ["homefeed.data", "homefeed.embeddings", "homefeed.features", "homefeed.simulate", "homefeed.kuairand", "homefeed.sequence_store",
             "homefeed.event_log", "homefeed.monitor_records", "expectations"],
    "models": ["models"],
    "engines": ["jobs", "homefeed.validation", "homefeed.drift", "homefeed.train", "homefeed.evaluate", "homefeed.gates",
                "homefeed.registry", "homefeed.experiments", "homefeed.readout"],
    "workflows": ["homefeed.pipeline", "homefeed.report", "homefeed.monitor", "homefeed.compare", "homefeed.loop",
                  "homefeed.serving", "homefeed.serving.service", "homefeed.serving.metrics", "homefeed.experiment_sim"],
    "interfaces": ["homefeed.cli", "homefeed.airflow_setup", "homefeed.local_platform", "homefeed.airflow_links", "homefeed.stack", "homefeed.serving.app", "dags"],
    "tools": ["benchmarks"],
}
PACKAGES = ("homefeed", "models", "jobs", "expectations", "dags", "benchmarks")
# Workflows that call each other, each for a reason docs/architecture.md gives; any other edge
# inside the layer fails (the report once imported the monitor, and with it Spark).
WORKFLOW_EDGES = {
    ("homefeed.pipeline", "homefeed.report"), ("homefeed.pipeline", "homefeed.monitor"),
    ("homefeed.loop", "homefeed.pipeline"), ("homefeed.loop", "homefeed.serving.service"),
    ("homefeed.experiment_sim", "homefeed.loop"), ("homefeed.experiment_sim", "homefeed.pipeline"),
    ("homefeed.experiment_sim", "homefeed.serving.service"),
}


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


def _package_of(module: str, path: Path) -> list[str]:
    return module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]


def _dynamic_import(node: ast.AST) -> str | None:
    """``importlib.import_module("a.b")`` or ``import_module(f"a.{x}")``: the module, or its package."""
    if not (isinstance(node, ast.Call) and node.args and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
        return None
    target = node.args[0]
    if isinstance(target, ast.Constant) and isinstance(target.value, str):
        return target.value
    if isinstance(target, ast.JoinedStr) and target.values and isinstance(target.values[0], ast.Constant):
        return str(target.values[0].value).rstrip(".") or None
    return None


def imports(path: Path, module: str = "") -> set[str]:
    """Every module ``path`` imports: absolute and relative, at any depth, and importlib's by name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(module, path)
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif (dynamic := _dynamic_import(node)) is not None:
            names.add(dynamic)
    return {n for n in names if n}


def upward_imports() -> list[str]:
    names = list(LAYERS)
    found = []
    for module, path in modules().items():
        mine = layer_of(module)
        for imported in imports(path, module):
            theirs = layer_of(imported)
            if mine is not None and theirs is not None and theirs > mine:
                found.append(f"{module} ({names[mine]}) imports {imported} ({names[theirs]})")
    return sorted(found)


def workflow_edges() -> set[tuple[str, str]]:
    """Imports from one workflow module of another (each module's own sub-modules aside)."""
    workflows = LAYERS["workflows"]
    mine = {m: p for m, p in modules().items() if layer_of(m) == list(LAYERS).index("workflows")}
    edges = set()
    for module, path in mine.items():
        for imported in imports(path, module):
            target = max((w for w in workflows if imported == w or imported.startswith(w + ".")), key=len, default=None)
            source = max((w for w in workflows if module == w or module.startswith(w + ".")), key=len)
            if target and target != source and not target.startswith(source + ".") and not source.startswith(target + "."):
                edges.add((source, target))
    return edges


def test_workflows_call_each_other_only_where_documented(tmp_path, monkeypatch):
    assert workflow_edges() <= WORKFLOW_EDGES
    bad = tmp_path / "bad.py"  # the negative case: the report reading the monitor again
    bad.write_text("from homefeed import monitor\n")
    monkeypatch.setattr(f"{__name__}.modules", lambda: {"homefeed.report": bad})
    assert workflow_edges() == {("homefeed.report", "homefeed.monitor")}


def test_relative_and_importlib_imports_are_read(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text("from . import sibling\nfrom ..cli import app\nimport importlib\nimportlib.import_module(f'jobs.{1}')\n")
    found = imports(package / "mod.py", "homefeed.serving.mod")
    assert {"homefeed.serving.sibling", "homefeed.cli", "homefeed.cli.app", "jobs"} <= found


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


def documented_layers() -> dict[str, list[str]]:
    """docs/architecture.md's list: ``- **layer**: `module` …`` (continued on indented lines)."""
    import re

    layers, current = {}, None
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        heading = re.match(r"- \*\*(\w+)\*\*:", line)
        if heading:
            current = heading.group(1)
            layers[current] = []
        elif current and not line.startswith("  "):
            current = None
        if current:
            layers[current] += re.findall(r"`([\w.]+)`", line)
    return layers


def test_the_documented_layers_are_these():
    """Each layer's own list in the doc, module for module (before: a name anywhere in the doc passed)."""
    assert {layer: sorted(names) for layer, names in documented_layers().items()} == {
        layer: sorted(prefixes) for layer, prefixes in LAYERS.items()}


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
        "generate": [], "import-kuairand": [], "build-instances": [], "embed-pins": [], "config": [], "validate": [], "instances": ["show"],
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
