"""The retraining pipeline's stages, one function each; DAG tasks and the CLI call these.

Every stage reads and writes under one run directory (``<storage root>/runs/<run_id>/``), records
its result as ``<stage>.json`` there, and returns a small JSON-able dict (what Airflow passes
between tasks). Re-running a stage with the same run directory is idempotent: the instance job
skips identical work, training resumes from its checkpoint, and registration returns the
version already registered for the run.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from homefeed import schema, storage
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


def _load(directory: Path, stage: str) -> dict[str, Any]:
    path = directory / f"{stage}.json"
    if not path.exists():
        raise storage.StorageError(f"stage {stage!r} has no result in {directory}: run it first")
    return json.loads(path.read_text())


def _spark(cfg: Config):
    from homefeed.spark import get_spark

    return get_spark(cfg.spark, "homefeed-retrain", cfg.instances.shuffle_partitions)


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


def check_raw(cfg: Config, raw: str, directory: Path) -> dict[str, Any]:
    root = storage.require_published(raw, "raw data")
    missing = [t for t in schema.RAW_TABLES if not storage.list_files(root / t)]
    if missing:
        raise storage.StorageError(f"raw data at {root} has no Parquet files for {missing}")
    return _record(cfg, directory, "check_raw", {"raw": str(root), "tables": list(schema.RAW_TABLES)})


def validate_raw(cfg: Config, raw: str, directory: Path) -> dict[str, Any]:
    from homefeed import validation

    reports = validation.validate_raw(_spark(cfg), raw, cfg, directory / "data_docs")
    return _record(cfg, directory, "validate_raw", {"suites": [r.describe() for r in reports], "data_docs": str(directory / "data_docs" / "index.html")})


def build_instances(cfg: Config, raw: str, directory: Path, start: date | None = None, end: date | None = None) -> dict[str, Any]:
    from homefeed.event_log import log_root
    from jobs import build_instances as job

    out = directory / "instances"
    # What users did on served feeds (homefeed serve's event log) joins the raw actions.
    events = job.event_log_roots([str(log_root(cfg.serving.event_log, cfg.storage.root))]) if cfg.instances.use_served_events else ()
    manifest = job.run(_spark(cfg), raw, str(out), cfg, start, end, event_logs=events)
    return _record(cfg, directory, "build_instances", {"instances": str(out), "rows": manifest["output_rows"], "window": manifest["window"], "splits": manifest["splits"]})


def validate_instances(cfg: Config, directory: Path) -> dict[str, Any]:
    from homefeed import validation

    instances = _load(directory, "build_instances")["instances"]
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
    run = registry.client(cfg).create_run(registry.experiment_id(cfg), run_name=directory.name, tags={"homefeed.run_dir": str(directory)})
    storage.write_json(marker, {"run_id": run.info.run_id})
    return run.info.run_id


def train(cfg: Config, directory: Path) -> dict[str, Any]:
    from homefeed import registry, train as trainer

    instances = _load(directory, "build_instances")["instances"]
    result = trainer.train(instances, str(directory / "train"), cfg)
    mlflow_client, run_id = registry.client(cfg), _mlflow_run(cfg, directory)
    registry.log_train_params(mlflow_client, run_id, cfg.train)
    for entry in result.history:
        for head, auc in entry["val_auc"].items():
            if auc == auc:  # skip NaN
                mlflow_client.log_metric(run_id, f"val_auc_{head}", auc, step=entry["epoch"])
        mlflow_client.log_metric(run_id, "train_loss", entry["train_loss"], step=entry["epoch"])
    mlflow_client.log_dict(run_id, storage.read_manifest(instances), "data/instances_manifest.json")
    return _record(cfg, directory, "train", {"model_dir": result.model_dir, "model": result.model,
                                        "validation_auc": {h: m["auc"] for h, m in result.validation.items()},
                                        "examples_per_second": result.examples_per_second, "history": result.history})


def evaluate(cfg: Config, directory: Path) -> dict[str, Any]:
    """Score the challenger and the current champion on the same test split."""
    from homefeed import evaluate as ev, registry
    from homefeed.data import read_instances
    from models.zoo import load_scorer

    instances = _load(directory, "build_instances")["instances"]
    test = read_instances(instances, "test")
    challenger = ev.evaluate_scorer(load_scorer(_load(directory, "train")["model_dir"]), test, cfg)
    champion_version, champion_scorer = registry.load_scorer_for(cfg, registry.CHAMPION)
    champion = ev.evaluate_scorer(champion_scorer, test, cfg) if champion_scorer is not None else None
    run_id = _mlflow_run(cfg, directory)
    mlflow_client = registry.client(cfg)
    for key, value in ev.headline(challenger).items():
        if value == value:
            mlflow_client.log_metric(run_id, f"test_{key}", value)
    result = {"challenger": challenger, "champion": champion, "champion_version": champion_version}
    mlflow_client.log_dict(run_id, result, "evaluation.json")
    return _record(cfg, directory, "evaluate", result)


def gate(cfg: Config, directory: Path) -> dict[str, Any]:
    from homefeed import gates, registry

    evaluation = _load(directory, "evaluate")
    decision = gates.decide(cfg.gates, evaluation["challenger"], evaluation["champion"], evaluation["champion_version"])
    run_id = _mlflow_run(cfg, directory)
    registry.client(cfg).log_dict(run_id, decision.to_dict(), "gate_decision.json")
    registry.client(cfg).set_tag(run_id, "gate", decision.summary())
    return _record(cfg, directory, "gate", decision.to_dict())


def register(cfg: Config, directory: Path) -> dict[str, Any]:
    from homefeed import registry
    from homefeed.data import read_instances

    existing = directory / "register.json"
    if existing.exists():
        return json.loads(existing.read_text())
    decision = _load(directory, "gate")
    if not decision["passed"]:
        raise GateFailed(decision["summary"])
    instances = _load(directory, "build_instances")["instances"]
    manifest = storage.read_manifest(instances)
    example = registry.input_example(read_instances(instances, "test"))
    tags = {
        "data.instances": instances, "data.fingerprint": manifest["fingerprint"], "data.rows": manifest["output_rows"],
        "data.window": f"{manifest['window']['start']}..{manifest['window']['end']}",
        "model.name": _load(directory, "train")["model"], "gate": decision["summary"],
        **registry.gate_tags(decision["champion_version"]),
    }
    run_id = _mlflow_run(cfg, directory)
    checks = _log_lineage(cfg, run_id, directory)
    tags.update({f"validation.{stage}": summary for stage, summary in checks.items()})
    version = registry.log_and_register(
        cfg, run_id, _load(directory, "train")["model_dir"], example, tags, features=registry.serving_features(manifest)
    )
    return _record(cfg, directory, "register", {"version": version, "model_name": cfg.registry.model_name})


def _log_lineage(cfg: Config, run_id: str, directory: Path) -> dict[str, str]:
    """Config and data-check results onto the MLflow run: a version leads back to its checks."""
    from homefeed import registry

    mlflow_client = registry.client(cfg)
    mlflow_client.log_dict(run_id, cfg.model_dump(mode="json"), "config.json")
    summaries = {}
    for stage in ("validate_raw", "validate_instances", "drift"):
        path = directory / f"{stage}.json"
        if path.exists():
            result = json.loads(path.read_text())
            mlflow_client.log_dict(run_id, result, f"validation/{stage}.json")
            if stage != "drift":
                summaries[stage] = f"{len(result['suites'])} suites passed"
    return summaries


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


def report(cfg: Config, directory: Path) -> dict[str, Any]:
    from homefeed import registry, report as run_report

    path = run_report.write(cfg, directory, registry.state(cfg).to_dict())
    marker = directory / "mlflow_run.json"
    if marker.exists():
        registry.client(cfg).log_artifact(json.loads(marker.read_text())["run_id"], str(path), "report")
    return _record(cfg, directory, "report", {"report": str(path)})


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


def retrain_in_process(cfg: Config, raw: str, directory: Path, start: date, end: date) -> dict[str, Any]:
    """The homefeed_retrain stages in their DAG order, in this process, without Airflow.

    For simulations that retrain many times (``homefeed simulate-loop``), where an Airflow run per
    simulated retraining would cost more than the retraining. A failed gate stops before
    registration, as in the DAG; the report is written either way.
    """
    stage = "check_raw"
    try:
        check_raw(cfg, raw, directory)
        stage = "validate_raw"
        validate_raw(cfg, raw, directory)
        stage = "build_instances"
        build_instances(cfg, raw, directory, start, end)
        stage = "validate_instances"
        validate_instances(cfg, directory)
        stage = "train"
        train(cfg, directory)
        stage = "evaluate"
        evaluate(cfg, directory)
        stage = "gate"
        decision = gate(cfg, directory)
        if decision["passed"]:
            stage = "register"
            register(cfg, directory)
            stage = "promote"
            promote(cfg, directory)
        return decision
    except Exception as exc:
        log_task_failure(stage, exc, directory)
        raise
    finally:
        report(cfg, directory)


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
