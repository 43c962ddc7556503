"""The retraining pipeline: its stages, each one typed function, and the runner that records them.

A stage is ``def name(ctx: RunContext) -> Result``: it reads the earlier stages' *typed*
results from the context (``ctx.earlier(InstancesBuilt)``), does its work through the engines
and returns its own typed result. It never writes its record: the runner (:func:`run_stage`),
keyed by ``Stage.name`` (the only spelling of a stage's name), says when it starts and ends,
writes ``<name>.json``, the timings and the failure record, publishes the run to S3 when S3 is the
storage of record, and logs the record to the run's MLflow run (its lineage). The DAG, the
in-process runner and the report follow :data:`STAGES`; adding a stage is one function and one
entry there (``docs/architecture.md`` has a worked example).

Every stage reads and writes under one run directory (``<storage root>/runs/<run_id>/``).
Re-running a stage with the same run directory is idempotent: the instance job skips identical
work, training resumes from its checkpoint, and registration returns the version already
registered for the run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from homefeed import progress, schema, storage
from homefeed.config import Config

if TYPE_CHECKING:  # heavy imports stay out of the DAG files' import
    import pyarrow as pa

    from homefeed.data import InstanceDataset
    from homefeed.registry import HomefeedModel


class GateFailed(RuntimeError):
    """The challenger did not pass the gates; the message lists the reasons."""


def run_dir(cfg: Config, run_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_")
    path = storage.local_path(cfg.storage.root) / "runs" / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


TIMINGS_DIR = "timings"  # <run>/timings/<stage>.json: when each stage started and how long it took
MLFLOW_RUN_MARKER = "mlflow_run.json"  # <run>/mlflow_run.json: the run's MLflow run id, once created
LINEAGE_DIR = "stages"  # each stage's record as an artifact of the MLflow run: stages/<stage>.json


# --------------------------------------------------------------------------- typed results
@dataclass(frozen=True)
class StageResult:
    """What a stage returns; its record (``<stage>.json``) is :meth:`record`, read back by :meth:`from_record`."""

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]):
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class RawChecked(StageResult):
    raw: str
    tables: list[str]


@dataclass(frozen=True)
class RawValidated(StageResult):
    suites: list[str]
    data_docs: str


@dataclass(frozen=True)
class PinsEmbedded(StageResult):  # embeddings None: embeddings.method none, the pins' content vectors are used
    embeddings: str | None
    method: str
    end: str | None = None
    learned: int = 0
    pins: int = 0
    coverage: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class InstancesBuilt(StageResult):
    instances: str
    rows: int
    window: dict[str, Any]
    splits: dict[str, Any]


@dataclass(frozen=True)
class InstancesValidated(RawValidated):  # the instances' suites, and the drift check against the last run
    drift: str


@dataclass(frozen=True)
class Trained(StageResult):
    model_dir: str
    model: str
    validation_auc: dict[str, float]
    examples_per_second: float
    history: list[dict[str, Any]]


@dataclass(frozen=True)
class Evaluated(StageResult):
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    champion_version: str | None
    paired_vs_champion: dict[str, Any] | None


@dataclass(frozen=True)
class Gated(StageResult):
    passed: bool
    summary: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    champion_version: str | None = None


@dataclass(frozen=True)
class Registered(StageResult):
    version: str
    model_name: str


@dataclass(frozen=True)
class Promoted(StageResult):
    promoted: bool
    version: str
    reason: str
    audit: dict[str, Any] = field(default_factory=dict)  # the registry's audit record of the promotion

    def record(self) -> dict[str, Any]:  # flat, as the report shows it
        return {**self.audit, "promoted": self.promoted, "version": self.version, "reason": self.reason}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> "Promoted":
        audit = {k: v for k, v in data.items() if k not in ("promoted", "version", "reason")}
        return cls(data["promoted"], data["version"], data.get("reason") or "", audit)


@dataclass(frozen=True)
class Reported(StageResult):
    report: str


R = TypeVar("R", bound=StageResult)


# --------------------------------------------------------------------------- what a stage is given
@dataclass(frozen=True)
class RunContext:
    """One retraining run, as every stage sees it: the config (with the run's params), the run
    directory, the raw root and the data window, whether to promote, and the stage list being
    run (so earlier results are found by their type)."""

    cfg: Config
    directory: Path
    raw: str = ""
    start: date | None = None
    end: date | None = None
    auto_promote: bool = True
    stages: tuple["Stage", ...] | None = None  # None: STAGES and REPORT

    def stage_list(self) -> tuple["Stage", ...]:
        return self.stages if self.stages is not None else (*STAGES, REPORT)

    def earlier(self, result_type: type[R]) -> R:
        """The typed result of the earlier stage that returns ``result_type``; refused when it has not run."""
        found = recorded(self.directory, result_type, self.stage_list())
        if found is None:
            name = _stage_of(result_type, self.stage_list()).name
            raise storage.StorageError(f"stage {name!r} has no result in {self.directory}: run it first")
        return found

    def mlflow_run(self) -> str:
        """The run's MLflow run id, created once: dated from the first stage's start (so its
        duration covers the whole retraining), with the config and the records of the stages
        done so far logged on it (the runner logs each later one)."""
        from homefeed import registry

        marker = self.directory / MLFLOW_RUN_MARKER
        if marker.exists():
            return json.loads(marker.read_text())["run_id"]
        run_id = registry.start_run(self.cfg, self.directory.name, {"homefeed.run_dir": str(self.directory)},
                                    started_ms=_run_started_ms(self.directory))
        storage.write_json(marker, {"run_id": run_id})
        registry.log_dict(self.cfg, run_id, self.cfg.redacted(), "config.json")
        for step in self.stage_list():
            _log_lineage(self, step, run_id)
        return run_id

    def existing_mlflow_run(self) -> str | None:
        marker = self.directory / MLFLOW_RUN_MARKER
        return json.loads(marker.read_text())["run_id"] if marker.exists() else None


def _stage_of(result_type: type[StageResult], stages: tuple["Stage", ...]) -> "Stage":
    return next(s for s in stages if s.result is result_type)


def recorded(directory: Path, result_type: type[R], stages: tuple["Stage", ...] | None = None) -> R | None:
    """The typed result recorded in ``directory`` by the stage that returns ``result_type``, or None."""
    step = _stage_of(result_type, stages if stages is not None else (*STAGES, REPORT))
    path = directory / f"{step.name}.json"
    return result_type.from_record(json.loads(path.read_text())) if path.exists() else None


def _run_started_ms(directory: Path) -> int | None:
    starts = [json.loads(p.read_text())["started_at"] for p in (directory / TIMINGS_DIR).glob("*.json")]
    return int(min(datetime.fromisoformat(s) for s in starts).timestamp() * 1000) if starts else None


def _spark(cfg: Config):
    from homefeed.spark import session

    return session(cfg, "retrain")


def _instances(ctx: RunContext):
    """The run's published instances."""
    from homefeed.data import InstanceDataset

    return InstanceDataset.open(ctx.earlier(InstancesBuilt).instances)


# --------------------------------------------------------------------------- the stages
def check_raw(ctx: RunContext) -> RawChecked:
    root = storage.require_published(ctx.raw, "raw data")
    missing = [t for t in schema.RAW_TABLES if not storage.list_files(root / t)]
    if missing:
        raise storage.StorageError(f"raw data at {root} has no Parquet files for {missing}")
    return RawChecked(str(root), list(schema.RAW_TABLES))


def validate_raw(ctx: RunContext) -> RawValidated:
    from homefeed import validation

    docs = ctx.directory / "data_docs"
    reports = validation.validate_raw(_spark(ctx.cfg), ctx.raw, ctx.cfg, docs)
    return RawValidated([r.describe() for r in reports], str(docs / "index.html"))


def _served_events(cfg: Config) -> tuple[str, ...]:
    """What users did on served feeds (homefeed serve's event log), read beside the raw actions."""
    from homefeed.event_log import log_root
    from jobs import build_instances as job

    return job.event_log_roots([str(log_root(cfg.serving.event_log, cfg.storage.root))]) if cfg.instances.use_served_events else ()


def embed_pins(ctx: RunContext) -> PinsEmbedded:
    """Learn the pins' embeddings from the engagement before the first validation day, and check
    them (GX); with ``embeddings.method: none`` the instances keep the content vectors."""
    if ctx.cfg.embeddings.method == "none":
        return PinsEmbedded(None, "none")
    from homefeed import validation
    from jobs import build_instances as instances_job, embed_pins as job

    last_day = ctx.end or storage.landed_days(ctx.raw)[-1]
    cutoff = instances_job.last_training_day(last_day, ctx.cfg.instances)
    out, spark = ctx.directory / "pin_embeddings", _spark(ctx.cfg)
    manifest = job.run(spark, ctx.raw, str(out), ctx.cfg, cutoff, event_logs=_served_events(ctx.cfg))
    validation.validate(spark, "pin_embeddings", str(out), ctx.cfg, ctx.directory / "data_docs")
    return PinsEmbedded(str(out), manifest["method"], cutoff.isoformat(), manifest["learned"], manifest["pins"], manifest["coverage"])


def build_instances(ctx: RunContext) -> InstancesBuilt:
    from jobs import build_instances as job

    cfg, out = ctx.cfg, ctx.directory / "instances"
    manifest = job.run(_spark(cfg), ctx.raw, str(out), cfg, ctx.start, ctx.end, event_logs=_served_events(cfg),
                       pin_embeddings=ctx.earlier(PinsEmbedded).embeddings)
    return InstancesBuilt(str(out), manifest["output_rows"], manifest["window"], manifest["splits"])


def validate_instances(ctx: RunContext) -> InstancesValidated:
    from homefeed import validation

    instances = _instances(ctx).path
    spark = _spark(ctx.cfg)
    reports = validation.validate(spark, "instances", instances, ctx.cfg, ctx.directory / "data_docs")
    shift = check_drift(ctx.cfg, spark, instances, ctx.directory)
    return InstancesValidated([r.describe() for r in reports], str(ctx.directory / "data_docs" / "index.html"), shift)


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


def train(ctx: RunContext) -> Trained:
    # The MLflow run is created here, so its curves are live while it trains.
    result = train_tracked(ctx.cfg, _instances(ctx), str(ctx.directory / "train"), ctx.mlflow_run())
    return Trained(result.model_dir, result.model, {h: m["auc"] for h, m in result.validation.items()},
                   result.examples_per_second, result.history)


def evaluate_against_champion(cfg: Config, instances, model_dir: str) -> dict[str, Any]:
    """A trained model and the current champion on the same test split, with the paired change;
    the evaluate stage and ``homefeed evaluate`` both score through here. ``instances``: an
    InstanceDataset or its path."""
    from homefeed import evaluate as ev, registry
    from homefeed.data import InstanceDataset
    from models.zoo import load_scorer

    dataset = InstanceDataset.of(instances)
    test = dataset.read("test")
    champion_version, champion = registry.load_model_for(cfg, registry.CHAMPION)
    champion_test = test if champion is None else champion_view(test, dataset, champion)
    champion_scorer = None if champion is None else champion.scorer
    challenger, champion_metrics, paired = ev.challenger_and_champion(load_scorer(model_dir), champion_scorer, test, cfg,
                                                                      champion_table=champion_test)
    return {"challenger": challenger, "champion": champion_metrics, "champion_version": champion_version, "paired_vs_champion": paired}


def champion_view(test: pa.Table, dataset: InstanceDataset, champion: HomefeedModel) -> pa.Table:
    """The test rows with the pin vectors the champion was trained with, when they are not the
    instances' own (learned vectors of another window, or content vectors against learned ones):
    as serving gives them, newer pins included (features.add_snapshot_pins)."""
    from homefeed import features

    own = champion.pin_vectors.manifest.get("fingerprint") if champion.pin_vectors is not None else None
    if own == (dataset.manifest.get("pin_embeddings") or {}).get("fingerprint"):
        return test
    snapshot = features.FeatureSnapshot.load(dataset.manifest["raw_root"])
    features.add_snapshot_pins(champion, snapshot)
    return features.with_vectors_trained_on(test, champion.pin_vectors, snapshot)


def evaluate(ctx: RunContext) -> Evaluated:
    """Score the challenger and the current champion on the same test split."""
    from homefeed import registry

    result = Evaluated(**evaluate_against_champion(ctx.cfg, _instances(ctx), ctx.earlier(Trained).model_dir))
    registry.log_metrics(ctx.cfg, ctx.mlflow_run(), _test_metrics(result.challenger, result.champion))
    return result


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


def gate(ctx: RunContext) -> Gated:
    from homefeed import gates, registry

    evaluation = ctx.earlier(Evaluated)
    decision = gates.decide(ctx.cfg.gates, evaluation.challenger, evaluation.champion, evaluation.champion_version)
    registry.set_run_tag(ctx.cfg, ctx.mlflow_run(), "gate", decision.summary())
    return Gated.from_record(decision.to_dict())


def register(ctx: RunContext) -> Registered:
    from homefeed import registry

    decision = ctx.earlier(Gated)
    if not decision.passed:
        raise GateFailed(decision.summary)
    instances, trained = _instances(ctx), ctx.earlier(Trained)
    tags = {
        "model.name": trained.model, "gate": decision.summary,
        **registry.gate_tags(decision.champion_version),
        "data.window": instances.window, "data.rows": instances.manifest["output_rows"],
        "data.instances": instances.path, "data.fingerprint": instances.fingerprint,
        "validation.validate_raw": _suites_passed(ctx.earlier(RawValidated)),
        "validation.validate_instances": _suites_passed(ctx.earlier(InstancesValidated)),
    }
    version = registry.log_and_register(ctx.cfg, ctx.mlflow_run(), trained.model_dir, registry.input_example(instances.read("test")),
                                        tags, features=registry.serving_features(instances.manifest))
    return Registered(version, ctx.cfg.registry.model_name)


def promote(ctx: RunContext) -> Promoted:
    from homefeed import registry

    version = ctx.earlier(Registered).version
    if not ctx.auto_promote:
        return Promoted(False, version, "auto-promotion off: left as challenger")
    if registry.alias_version(ctx.cfg, registry.CHAMPION) == version:
        return Promoted(True, version, "already champion")
    audit = registry.promote(ctx.cfg, version, reason=f"retraining run {ctx.directory.name}", gate=ctx.earlier(Gated).summary,
                             actor="homefeed-retrain")
    return Promoted.from_record({"promoted": True, **audit})


def report(ctx: RunContext) -> Reported:
    from homefeed import registry, report as run_report

    stage_names = tuple(s.name for s in ctx.stage_list() if s.name != REPORT.name)
    path = run_report.write(ctx.cfg, ctx.directory, registry.state(ctx.cfg).to_dict(), stage_names)
    run_id = ctx.existing_mlflow_run()
    if run_id:
        registry.log_artifact(ctx.cfg, run_id, path, "report")
        # The run ends when the retraining does (a failed gate is a finished run; a failed stage is not).
        registry.end_run(ctx.cfg, run_id, failed=any(ctx.directory.glob(f"*{schema.STAGE_FAILED_SUFFIX}")))
    return Reported(str(path))


def _suites_passed(result: RawValidated) -> str:
    return f"{len(result.suites)} suites passed"


def _version(version: Any) -> str:
    return "none" if version is None else f"v{version}"


def _embedding_figure(result: PinsEmbedded) -> str:
    if result.embeddings is None:
        return "content vectors (embeddings.method none)"
    return f"{result.method}: {result.learned:,} of {result.pins:,} pins learned from engagement up to {result.end}"


def _auc_figure(label: str, aucs: dict[str, float]) -> str:
    return label + " " + ", ".join(f"{h} {a:.4f}" for h, a in aucs.items() if a == a)


# --------------------------------------------------------------------------- the pipeline, defined once
@dataclass(frozen=True)
class Stage(Generic[R]):
    """One step of the retraining: its name (the one spelling: task id, record, timings, lineage),
    its function, the type it returns, what it reads and writes under the run directory (or
    beyond it; ``*.json`` files it writes beside its record join its MLflow lineage), its key
    figure for the operator, and, for the gate, why the rest of the run stops."""

    name: str
    run: Callable[[RunContext], R]
    result: type[R]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    figure: Callable[[R], str] = lambda result: "done"
    stops_run: Callable[[R], str | None] = lambda result: None
    once: bool = False  # a recorded result is returned as it is, without running again


# The only place the stage order is written: the retrain DAG builds its tasks from it,
# retrain_in_process loops over it, and the report lists it.
STAGES: tuple[Stage, ...] = (
    Stage("check_raw", check_raw, RawChecked, ("raw/",), ("check_raw.json",),
          figure=lambda r: f"{len(r.tables)} tables at {r.raw}"),
    Stage("validate_raw", validate_raw, RawValidated, ("raw/",), ("validate_raw.json", "data_docs/"), figure=_suites_passed),
    Stage("embed_pins", embed_pins, PinsEmbedded, ("raw/", "<storage root>/events/"), ("pin_embeddings/", "embed_pins.json", "data_docs/"),
          figure=_embedding_figure),
    Stage("build_instances", build_instances, InstancesBuilt, ("raw/", "<storage root>/events/", "pin_embeddings/"),
          ("instances/", "build_instances.json"),
          figure=lambda r: f"{r.rows:,} rows, {r.window['start']}..{r.window['end']}"),
    Stage("validate_instances", validate_instances, InstancesValidated, ("instances/", "<storage root>/drift/"),
          ("validate_instances.json", "drift.json", "data_docs/"), figure=lambda r: f"{_suites_passed(r)}; drift: {r.drift}"),
    Stage("train", train, Trained, ("instances/",), ("train/", "train.json", MLFLOW_RUN_MARKER, "MLflow run"),
          figure=lambda r: _auc_figure("validation AUC", r.validation_auc)),
    Stage("evaluate", evaluate, Evaluated, ("instances/", "train/", "registry: champion"), ("evaluate.json",),
          figure=lambda r: _auc_figure("test AUC", {h: m["auc"] for h, m in r.challenger["overall"].items()})
          + f"; champion {_version(r.champion_version)}"),
    Stage("gate", gate, Gated, ("evaluate.json",), ("gate.json",), figure=lambda r: r.summary,
          stops_run=lambda r: None if r.passed else r.summary),
    Stage("register", register, Registered, ("gate.json", "train/"), ("register.json", "registry: version, challenger"),
          figure=lambda r: f"{r.model_name} {_version(r.version)}", once=True),
    Stage("promote", promote, Promoted, ("register.json", "gate.json"), ("promote.json", "registry: champion, previous"),
          figure=lambda r: f"{_version(r.version)} is champion" if r.promoted else f"{_version(r.version)} left as challenger"),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
# Runs last, whatever happened before: a failed or gated run is reported too.
REPORT = Stage("report", report, Reported, ("every stage's record",), ("report.html", "report.json"), figure=lambda r: r.report)


def stage(name: str) -> Stage:
    return next(s for s in (*STAGES, REPORT) if s.name == name)


# --------------------------------------------------------------------------- the runner
def _spark_progress() -> str | None:
    from homefeed.spark import progress as spark_progress

    return spark_progress()


def run_stage(step: Stage[R], ctx: RunContext) -> R:
    """Run one stage and record it: its start and end for the operator (a heartbeat meanwhile,
    with Spark's progress), its timings (a failed stage's too), its failure record, its result
    as ``<name>.json``, the run published to S3, and its lineage on the MLflow run."""
    if step.once and (done := recorded(ctx.directory, step.result, ctx.stage_list())) is not None:
        return done
    started, started_at = time.monotonic(), datetime.now(timezone.utc)
    progress.report("%s: started", step.name)
    try:
        with progress.heartbeat(step.name, _spark_progress):
            result = step.run(ctx)
    except Exception as exc:
        record_failure(ctx.directory, step.name, exc)
        raise
    finally:  # a failed stage's start and duration are in the report too
        seconds = time.monotonic() - started
        storage.write_json(ctx.directory / TIMINGS_DIR / f"{step.name}.json",
                           {"started_at": started_at.isoformat(timespec="seconds"), "seconds": seconds})
    _record(ctx, step, result)
    progress.report("%s: done in %s: %s", step.name, progress.duration(seconds), step.figure(result))
    return result


def _record(ctx: RunContext, step: Stage[R], result: R) -> None:
    storage.write_json(ctx.directory / f"{step.name}.json", result.record())
    run_id = ctx.existing_mlflow_run()
    if run_id:
        _log_lineage(ctx, step, run_id)
    if ctx.cfg.storage.s3_uri:  # with S3 as the storage of record, the run so far is published there too
        from homefeed import s3

        s3.publish_run(ctx.cfg.storage.s3_uri, ctx.directory)


def _log_lineage(ctx: RunContext, step: Stage, run_id: str) -> None:
    """The stage's record, and the JSON files it writes beside it, as artifacts of the MLflow run."""
    from homefeed import registry

    for name in (f"{step.name}.json", *step.writes):
        path = ctx.directory / name
        if name.endswith(".json") and name != MLFLOW_RUN_MARKER and path.is_file():
            registry.log_artifact(ctx.cfg, run_id, path, f"{LINEAGE_DIR}/{step.name}")


def failure_record(directory: Path, stage_name: str) -> Path:
    return directory / f"{stage_name}{schema.STAGE_FAILED_SUFFIX}"


def record_failure(directory: Path, stage_name: str, exception: BaseException | None) -> None:
    """Say it in the log, and leave ``<stage>.failed.json`` in the run directory for the report."""
    import logging

    logging.getLogger("homefeed").error("homefeed stage %s failed: %s", stage_name, exception or "unknown error")
    error = str(exception) if exception is not None else "unknown error"
    storage.write_json(failure_record(directory, stage_name),
                       {"stage": stage_name, "error": error, "type": type(exception).__name__ if exception else None})


def retrain_in_process(cfg: Config, raw: str, directory: Path, start: date, end: date, auto_promote: bool = True) -> Gated:
    """The homefeed_retrain stages in their DAG order, in this process, without Airflow.

    For simulations that retrain many times (``homefeed simulate-loop``), where an Airflow run per
    simulated retraining would cost more than the retraining. A failed gate stops before
    registration, as in the DAG; the report is written either way. Returns the gate's decision.
    ``auto_promote=False`` leaves a passed version as challenger (an online experiment decides).
    """
    ctx = RunContext(cfg, directory, raw, start, end, auto_promote, stages=(*STAGES, REPORT))
    try:
        for step in STAGES:
            if step.stops_run(run_stage(step, ctx)):
                break
        return ctx.earlier(Gated)
    finally:
        run_stage(REPORT, ctx)


def monitor_champion(cfg: Config, raw: str) -> dict[str, Any]:
    """The staleness monitor over the days landed since the champion's training window."""
    from homefeed import monitor

    return monitor.run(_spark(cfg), cfg, raw)
