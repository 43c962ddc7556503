"""The retraining pipeline's stages, one function each; DAG tasks and the CLI call these.

Every stage reads and writes under one run directory (``<storage root>/runs/<run_id>/``), records
its result as ``<stage>.json`` there, and returns a small JSON-able dict (what Airflow passes
between tasks). Re-running a stage with the same run directory is idempotent: the instance job
skips identical work, training resumes from its checkpoint, and registration returns the
version already registered for the run.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from homefeed import progress, schema, storage
from homefeed.config import Config


class GateFailed(RuntimeError):
    """The challenger did not pass the gates; the message lists the reasons."""


def run_dir(cfg: Config, run_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_")
    path = storage.local_path(cfg.storage.root) / "runs" / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


def _record(cfg: Config, directory: Path, stage: str, result: dict[str, Any]) -> dict[str, Any]:
    """A stage's result; with S3 as the storage of record, the run so far is published there too."""
    storage.write_json(directory / f"{stage}.json", result)
    if cfg.storage.s3_uri:
        from homefeed import s3

        s3.publish_run(cfg.storage.s3_uri, directory)
    return result


def _instances(directory: Path):
    """The run's published instances (the build_instances stage names them)."""
    from homefeed.data import InstanceDataset

    return InstanceDataset.open(_load(directory, "build_instances")["instances"])


def _load(directory: Path, stage: str) -> dict[str, Any]:
    path = directory / f"{stage}.json"
    if not path.exists():
        raise storage.StorageError(f"stage {stage!r} has no result in {directory}: run it first")
    return json.loads(path.read_text())


def _spark(cfg: Config):
    from homefeed.spark import session

    return session(cfg, "retrain")


TIMINGS_DIR = "timings"  # <run>/timings/<stage>.json: when each stage started and how long it took


def _spark_progress() -> str | None:
    from homefeed.spark import progress as spark_progress

    return spark_progress()


def _stage(figure: Callable[[dict[str, Any]], str]):
    """A stage says when it starts, that it is still running (every ~10 s, with Spark's progress
    when a job runs), and when it is done: its duration and ``figure(result)``, its key figure."""
    def wrap(function):
        name = function.__name__
        signature = inspect.signature(function)

        @functools.wraps(function)
        def run(*args, **kwargs):
            started, started_at = time.monotonic(), datetime.now(timezone.utc)
            timing = Path(signature.bind(*args, **kwargs).arguments["directory"]) / TIMINGS_DIR / f"{name}.json"
            progress.report("%s: started", name)
            try:
                with progress.heartbeat(name, _spark_progress):
                    result = function(*args, **kwargs)
            finally:  # a failed stage's start and duration are in the report too
                seconds = time.monotonic() - started
                storage.write_json(timing, {"started_at": started_at.isoformat(timespec="seconds"), "seconds": seconds})
            progress.report("%s: done in %s: %s", name, progress.duration(seconds), figure(result))
            return result

        return run

    return wrap


def _suites_passed(result: dict[str, Any]) -> str:
    return f"{len(result['suites'])} suites passed"


def _version(version: Any) -> str:
    return "none" if version is None else f"v{version}"


# --------------------------------------------------------------------------- stages
# A scheduled run that starts this long after its slot was created by unpausing the DAG (Airflow
# then schedules the latest past slot at once), not by the clock: it must not retrain by surprise.
MISSED_SLOT_AFTER = timedelta(hours=1)


def missed_slot(run_type: Any, slot: datetime, now: datetime) -> str | None:
    """Why a run must not retrain (a missed scheduled slot), or None. ``run_type``: "scheduled",
    "manual", … or Airflow's enum of them (the Task SDK's prints as "DagRunType.SCHEDULED")."""
    if getattr(run_type, "value", run_type) != "scheduled" or now - slot <= MISSED_SLOT_AFTER:
        return None
    return (f"scheduled slot {slot.isoformat()} was missed (the DAG was paused then; it started {now - slot} late): "
            "not retraining by surprise; trigger a run to retrain now")


@_stage(lambda r: f"{len(r['tables'])} tables at {r['raw']}")
def check_raw(cfg: Config, raw: str, directory: Path) -> dict[str, Any]:
    root = storage.require_published(raw, "raw data")
    missing = [t for t in schema.RAW_TABLES if not storage.list_files(root / t)]
    if missing:
        raise storage.StorageError(f"raw data at {root} has no Parquet files for {missing}")
    return _record(cfg, directory, "check_raw", {"raw": str(root), "tables": list(schema.RAW_TABLES)})


@_stage(_suites_passed)
def validate_raw(cfg: Config, raw: str, directory: Path) -> dict[str, Any]:
    from homefeed import validation

    reports = validation.validate_raw(_spark(cfg), raw, cfg, directory / "data_docs")
    return _record(cfg, directory, "validate_raw", {"suites": [r.describe() for r in reports], "data_docs": str(directory / "data_docs" / "index.html")})


@_stage(lambda r: f"{r['rows']:,} rows, {r['window']['start']}..{r['window']['end']}")
def build_instances(cfg: Config, raw: str, directory: Path, start: date | None = None, end: date | None = None) -> dict[str, Any]:
    from homefeed.event_log import log_root
    from jobs import build_instances as job

    out = directory / "instances"
    # What users did on served feeds (homefeed serve's event log) joins the raw actions.
    events = job.event_log_roots([str(log_root(cfg.serving.event_log, cfg.storage.root))]) if cfg.instances.use_served_events else ()
    manifest = job.run(_spark(cfg), raw, str(out), cfg, start, end, event_logs=events)
    return _record(cfg, directory, "build_instances", {"instances": str(out), "rows": manifest["output_rows"], "window": manifest["window"], "splits": manifest["splits"]})


@_stage(lambda r: f"{_suites_passed(r)}; drift: {r['drift']}")
def validate_instances(cfg: Config, directory: Path) -> dict[str, Any]:
    from homefeed import validation

    instances = _instances(directory).path
    spark = _spark(cfg)
    reports = validation.validate(spark, "instances", instances, cfg, directory / "data_docs")
    shift = check_drift(cfg, spark, instances, directory)
    return _record(cfg, directory, "validate_instances", {"suites": [r.describe() for r in reports], "drift": shift,
                                                     "data_docs": str(directory / "data_docs" / "index.html")})


def check_drift(cfg: Config, spark, instances: str, directory: Path) -> str:
    """Compare with the previous run's instances; raises ValidationFailed past the limits."""
    from homefeed import drift, validation

    if not cfg.validation.drift.enabled:
        return "disabled"
    rows = validation.read_dataset(spark, "instances", instances, schema.ROWS_DIR)
    sequences = validation.read_dataset(spark, "instances", instances, schema.SEQUENCES_DIR)
    current = drift.profile(rows, sequences, storage.read_manifest(instances)["feature_stats"])
    previous = drift.previous_profile(cfg.storage.root, directory.name)
    report = drift.compare(current, previous[1], cfg.validation.drift, previous[0]) if previous else None
    drift.save(directory, current, report, previous[0] if previous else None)
    if report is not None and not report.success:
        raise validation.ValidationFailed([report])
    drift.accept(cfg.storage.root, directory.name, current)
    return report.describe() if report else "no previous run to compare with (this run is the baseline)"


def _mlflow_run(cfg: Config, directory: Path) -> str:
    """The run's MLflow run id, created once."""
    from homefeed import registry

    marker = directory / "mlflow_run.json"
    if marker.exists():
        return json.loads(marker.read_text())["run_id"]
    run_id = registry.start_run(cfg, directory.name, {"homefeed.run_dir": str(directory)}, started_ms=_run_started_ms(directory))
    storage.write_json(marker, {"run_id": run_id})
    return run_id


def _run_started_ms(directory: Path) -> int | None:
    """When the retraining's first stage started (its timings), so the MLflow run created at
    training covers the checks and Spark before it too."""
    starts = [json.loads(p.read_text())["started_at"] for p in (directory / TIMINGS_DIR).glob("*.json")]
    return int(min(datetime.fromisoformat(s) for s in starts).timestamp() * 1000) if starts else None


def train_tracked(cfg: Config, instances, out_dir: str, run_id: str):
    """Train ``cfg.train.model`` with its MLflow run live (params, data manifest, loss and
    validation curves while it trains, the best validation AUC after); the train stage and
    ``homefeed train`` both train through here. ``instances``: an InstanceDataset or its path."""
    from homefeed import registry, train as trainer
    from homefeed.data import InstanceDataset

    instances = InstanceDataset.of(instances)

    progress.report("train: MLflow run %s (experiment %s at %s): loss and validation AUC live there", run_id,
                    cfg.registry.experiment, registry.tracking_uri(cfg))
    registry.log_train_params(cfg, run_id, cfg.train)
    registry.log_dict(cfg, run_id, instances.manifest, "data/instances_manifest.json")
    with registry.system_metrics(cfg, run_id):
        result = trainer.train(instances.path, out_dir, cfg, tracking=(registry.tracking_uri(cfg), run_id))
    registry.log_metrics(cfg, run_id, {f"best_val_auc_{h}": m["auc"] for h, m in result.validation.items()})
    return result


@_stage(lambda r: "validation AUC " + ", ".join(f"{h} {a:.4f}" for h, a in r["validation_auc"].items() if a == a))
def train(cfg: Config, directory: Path) -> dict[str, Any]:
    # The MLflow run is created here, so its curves are live, and dated from the first stage's
    # start, so its duration covers the whole retraining (it ends with the report).
    result = train_tracked(cfg, _instances(directory), str(directory / "train"), _mlflow_run(cfg, directory))
    return _record(cfg, directory, "train", {"model_dir": result.model_dir, "model": result.model,
                                        "validation_auc": {h: m["auc"] for h, m in result.validation.items()},
                                        "examples_per_second": result.examples_per_second, "history": result.history})


def evaluate_against_champion(cfg: Config, instances, model_dir: str) -> dict[str, Any]:
    """A trained model and the current champion on the same test split, with the paired change;
    the evaluate stage and ``homefeed evaluate`` both score through here. ``instances``: an
    InstanceDataset or its path."""
    from homefeed import evaluate as ev, registry
    from homefeed.data import InstanceDataset
    from models.zoo import load_scorer

    test = InstanceDataset.of(instances).read("test")
    champion_version, champion_scorer = registry.load_scorer_for(cfg, registry.CHAMPION)
    challenger, champion, paired = ev.challenger_and_champion(load_scorer(model_dir), champion_scorer, test, cfg)
    return {"challenger": challenger, "champion": champion, "champion_version": champion_version, "paired_vs_champion": paired}


@_stage(lambda r: "test AUC " + ", ".join(f"{h} {m['auc']:.4f}" for h, m in r["challenger"]["overall"].items() if m["auc"] == m["auc"])
        + f"; champion {_version(r['champion_version'])}")
def evaluate(cfg: Config, directory: Path) -> dict[str, Any]:
    """Score the challenger and the current champion on the same test split."""
    from homefeed import registry

    result = evaluate_against_champion(cfg, _instances(directory), _load(directory, "train")["model_dir"])
    run_id = _mlflow_run(cfg, directory)
    registry.log_metrics(cfg, run_id, _test_metrics(result["challenger"], result["champion"]))
    registry.log_dict(cfg, run_id, result, "evaluation.json")
    return _record(cfg, directory, "evaluate", result)


def _test_metrics(challenger: dict[str, Any], champion: dict[str, Any] | None) -> dict[str, float]:
    """The run's test metrics for MLflow: the headline, each slice's, the 95% interval bounds of
    each AUC and HIT@k, and the champion's headline on the same data (``champion_test_*``)."""
    from homefeed import evaluate as ev

    k = challenger["hit_k"]
    flat = {f"test_{key}": value for key, value in ev.headline(challenger).items()}
    for scope, per_head in challenger["slices"].items():
        for head, m in per_head.items():
            flat |= {f"test_{scope}_auc_{head}": m["auc"], f"test_{scope}_hit{k}_{head}": m["hit"]}
    for head, bounds in challenger["intervals"]["overall"].items():
        for metric, name in (("auc", "auc"), ("hit", f"hit{k}")):
            flat |= {f"test_{name}_{head}_lo": bounds[metric][0], f"test_{name}_{head}_hi": bounds[metric][1]}
    if champion is not None:
        flat |= {f"champion_test_{key}": value for key, value in ev.headline(champion).items()}
    return flat


@_stage(lambda r: r["summary"])
def gate(cfg: Config, directory: Path) -> dict[str, Any]:
    from homefeed import gates, registry

    evaluation = _load(directory, "evaluate")
    decision = gates.decide(cfg.gates, evaluation["challenger"], evaluation["champion"], evaluation["champion_version"])
    run_id = _mlflow_run(cfg, directory)
    registry.log_dict(cfg, run_id, decision.to_dict(), "gate_decision.json")
    registry.set_run_tag(cfg, run_id, "gate", decision.summary())
    return _record(cfg, directory, "gate", decision.to_dict())


@_stage(lambda r: f"{r['model_name']} {_version(r['version'])}")
def register(cfg: Config, directory: Path) -> dict[str, Any]:
    from homefeed import registry

    existing = directory / "register.json"
    if existing.exists():
        return json.loads(existing.read_text())
    decision = _load(directory, "gate")
    if not decision["passed"]:
        raise GateFailed(decision["summary"])
    instances = _instances(directory)
    example = registry.input_example(instances.read("test"))
    tags = {
        "model.name": _load(directory, "train")["model"], "gate": decision["summary"],
        **registry.gate_tags(decision["champion_version"]),
        "data.window": instances.window, "data.rows": instances.manifest["output_rows"],
        "data.instances": instances.path, "data.fingerprint": instances.fingerprint,
    }
    run_id = _mlflow_run(cfg, directory)
    checks = _log_lineage(cfg, run_id, directory)
    tags.update({f"validation.{stage}": summary for stage, summary in checks.items()})
    version = registry.log_and_register(
        cfg, run_id, _load(directory, "train")["model_dir"], example, tags, features=registry.serving_features(instances.manifest)
    )
    return _record(cfg, directory, "register", {"version": version, "model_name": cfg.registry.model_name})


def _log_lineage(cfg: Config, run_id: str, directory: Path) -> dict[str, str]:
    """Config and data-check results onto the MLflow run: a version leads back to its checks."""
    from homefeed import registry

    registry.log_dict(cfg, run_id, cfg.redacted(), "config.json")
    summaries = {}
    for stage in ("validate_raw", "validate_instances", "drift"):
        path = directory / f"{stage}.json"
        if path.exists():
            result = json.loads(path.read_text())
            registry.log_dict(cfg, run_id, result, f"validation/{stage}.json")
            if stage != "drift":
                summaries[stage] = f"{len(result['suites'])} suites passed"
    return summaries


@_stage(lambda r: f"{_version(r['version'])} is champion" if r["promoted"] else f"{_version(r['version'])} left as challenger")
def promote(cfg: Config, directory: Path, auto_promote: bool = True) -> dict[str, Any]:
    from homefeed import registry

    version = _load(directory, "register")["version"]
    if not auto_promote:
        return _record(cfg, directory, "promote", {"promoted": False, "version": version, "reason": "auto-promotion off: left as challenger"})
    decision = _load(directory, "gate")
    if registry.alias_version(cfg, registry.CHAMPION) == version:
        return _record(cfg, directory, "promote", {"promoted": True, "version": version, "reason": "already champion"})
    record = registry.promote(cfg, version, reason=f"retraining run {directory.name}", gate=decision["summary"], actor="homefeed-retrain")
    return _record(cfg, directory, "promote", {"promoted": True, **record})


@_stage(lambda r: r["report"])
def report(cfg: Config, directory: Path) -> dict[str, Any]:
    from homefeed import registry, report as run_report

    path = run_report.write(cfg, directory, registry.state(cfg).to_dict(), STAGE_NAMES)
    marker = directory / "mlflow_run.json"
    if marker.exists():
        run_id = json.loads(marker.read_text())["run_id"]
        registry.log_artifact(cfg, run_id, path, "report")
        # The run ends when the retraining does (a failed gate is a finished run; a failed stage is not).
        registry.end_run(cfg, run_id, failed=any(directory.glob(f"*{schema.STAGE_FAILED_SUFFIX}")))
    return _record(cfg, directory, "report", {"report": str(path)})


# --------------------------------------------------------------------------- the pipeline, defined once
@dataclass(frozen=True)
class RunInputs:
    """What one retraining run's stages are called with."""

    cfg: Config
    directory: Path
    raw: str
    start: date | None = None
    end: date | None = None
    auto_promote: bool = True


@dataclass(frozen=True)
class Stage:
    """One step of the retraining: its function (a single call), what it reads and writes under
    the run directory (or beyond it), and, for the gate, why the rest of the run stops."""

    name: str
    call: Callable[[RunInputs], dict[str, Any]]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    stops_run: Callable[[dict[str, Any]], str | None] = lambda result: None


# The only place the stage order is written: the retrain DAG builds its tasks from it,
# retrain_in_process loops over it, and the report lists it.
STAGES: tuple[Stage, ...] = (
    Stage("check_raw", lambda r: check_raw(r.cfg, r.raw, r.directory), ("raw/",), ("check_raw.json",)),
    Stage("validate_raw", lambda r: validate_raw(r.cfg, r.raw, r.directory), ("raw/",), ("validate_raw.json", "data_docs/")),
    Stage("build_instances", lambda r: build_instances(r.cfg, r.raw, r.directory, r.start, r.end),
          ("raw/", "<storage root>/events/"), ("instances/", "build_instances.json")),
    Stage("validate_instances", lambda r: validate_instances(r.cfg, r.directory), ("instances/", "<storage root>/drift/"),
          ("validate_instances.json", "drift.json", "data_docs/")),
    Stage("train", lambda r: train(r.cfg, r.directory), ("instances/",), ("train/", "train.json", "mlflow_run.json", "MLflow run")),
    Stage("evaluate", lambda r: evaluate(r.cfg, r.directory), ("instances/", "train/", "registry: champion"), ("evaluate.json",)),
    Stage("gate", lambda r: gate(r.cfg, r.directory), ("evaluate.json",), ("gate.json",),
          stops_run=lambda result: None if result["passed"] else result["summary"]),
    Stage("register", lambda r: register(r.cfg, r.directory), ("gate.json", "train/"), ("register.json", "registry: version, challenger")),
    Stage("promote", lambda r: promote(r.cfg, r.directory, r.auto_promote), ("register.json", "gate.json"),
          ("promote.json", "registry: champion, previous")),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
# Runs last, whatever happened before: a failed or gated run is reported too.
REPORT = Stage("report", lambda r: report(r.cfg, r.directory), ("every stage's record",), ("report.html", "report.json"))


def stage(name: str) -> Stage:
    return next(s for s in (*STAGES, REPORT) if s.name == name)


# --------------------------------------------------------------------------- runs from the orchestrator
# Params of the retraining DAG's trigger form → config keys.
PARAM_TO_CONFIG = {
    "model": ("train", "model"),
    "epochs": ("train", "epochs"),
    "positive_rate": ("instances", "positive_rate"),
    "negative_rate": ("instances", "negative_rate"),
    "min_auc_repin": ("gates", "min_auc"),
}


def config_from_params(params: dict[str, Any], base: Config | None = None) -> Config:
    """The typed config for a run: defaults and overlays, then the run's params."""
    from homefeed.config import load_config

    cfg = base or load_config()
    overrides: dict[str, Any] = {}
    for param, (section, key) in PARAM_TO_CONFIG.items():
        value = params.get(param)
        if value is None:
            continue
        if param == "min_auc_repin":
            value = {**cfg.gates.min_auc, schema.PRIMARY_HEAD: value}
        overrides.setdefault(section, {})[key] = value
    return cfg.with_overrides(overrides)


def retrain_in_process(cfg: Config, raw: str, directory: Path, start: date, end: date, auto_promote: bool = True) -> dict[str, Any]:
    """The homefeed_retrain stages in their DAG order, in this process, without Airflow.

    For simulations that retrain many times (``homefeed simulate-loop``), where an Airflow run per
    simulated retraining would cost more than the retraining. A failed gate stops before
    registration, as in the DAG; the report is written either way. Returns the gate's decision.
    ``auto_promote=False`` leaves a passed version as challenger (an online experiment decides).
    """
    inputs = RunInputs(cfg, directory, raw, start, end, auto_promote=auto_promote)
    results: dict[str, dict[str, Any]] = {}
    try:
        for step in STAGES:
            try:
                results[step.name] = step.call(inputs)
            except Exception as exc:
                log_task_failure(step.name, exc, directory)
                raise
            if step.stops_run(results[step.name]):
                break
        return results["gate"]
    finally:
        REPORT.call(inputs)


def monitor_champion(cfg: Config, raw: str) -> dict[str, Any]:
    """The staleness monitor over the days landed since the champion's training window."""
    from homefeed import monitor

    return monitor.run(_spark(cfg), cfg, raw)


def data_window(params: dict[str, Any], logical_date: date) -> tuple[date, date]:
    """The training window: ``window_days`` ending at ``end_date`` (default: the day before the run).

    Airflow 3 cron schedules carry no data interval, so the window comes from the logical date here.
    """
    from datetime import timedelta

    end = date.fromisoformat(params["end_date"]) if params.get("end_date") else logical_date - timedelta(days=1)
    return end - timedelta(days=int(params.get("window_days") or 7) - 1), end


def raw_root(cfg: Config, params: dict[str, Any]) -> str:
    """The raw data to read, as a local path: an ``s3://`` root is fetched into a local cache first
    (once per published version), since the stages read it with local Spark."""
    raw = params.get("raw") or str(storage.local_path(cfg.storage.root) / "raw")
    if raw.startswith(("s3://", "s3a://")):
        from homefeed import s3

        return str(s3.fetch_cached(raw, storage.local_path(cfg.storage.root) / "s3-cache"))
    return raw


def log_task_failure(task_id: str, exception: BaseException | None, directory: Path | None = None) -> None:
    """Say it in the log, and leave ``<stage>.failed.json`` in the run directory for the report."""
    import logging

    logging.getLogger("homefeed").error("homefeed task %s failed: %s", task_id, exception or "unknown error")
    if directory is not None:
        error = str(exception) if exception is not None else "unknown error"
        storage.write_json(directory / f"{task_id}{schema.STAGE_FAILED_SUFFIX}", {"stage": task_id, "error": error,
                                                                     "type": type(exception).__name__ if exception else None})
