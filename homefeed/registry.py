"""The MLflow registry: log, register, promote and roll back with aliases (never stages).

Aliases: ``challenger`` (the newest candidate: the latest registered version, never older than
the champion — a promotion of a newer version by hand moves it along), ``champion`` (serving),
``previous`` (the champion before the current one). Every promotion and rollback writes an audit record as version
tags and as a line of an append-only JSONL log under the storage root (MLflow itself keeps no
alias history), also logged as an artifact of the version's run.

Every promoted version carries the holdout configuration as tags (``holdout.fraction``,
``holdout.salt``); promotion refuses a version without it, or whose holdout differs from the
champion's, unless the change is asked for with a reason.

Promotion without ``force`` needs a passed gate recorded on the version (``gate.passed``) against
the version that is champion *now* (``gate.champion``): a version created outside the pipeline, or
gated against a champion another run has since replaced, is refused with that reason. The check
and the alias moves happen under an exclusive lock on the audit log, which is opened before
anything moves: an audit that cannot be written changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from homefeed import schema, storage
from homefeed.config import Config
from homefeed.embeddings import PinVectors
from homefeed.errors import PermanentError

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
HOLDOUT_TAGS = ("holdout.fraction", "holdout.salt")
GATE_PASSED, GATE_CHAMPION = "gate.passed", "gate.champion"
NO_CHAMPION = "none"
AUDIT_LOG = "registry/audit.jsonl"
EXPERIMENT_KIND, CLASSIC_ML = "mlflow.experimentKind", "custom_model_development"
# MLflow 3's UI opens an experiment on its GenAI overview whatever the kind tag says (a per-browser
# toggle decides); the URL's workflowType and a shared view (an experiment tag MLflow's "Views"
# reads) land a fresh browser on the runs table, with the columns a user compares.
RUNS_VIEW = "homefeed"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW}"


def runs_view(hit_k: int) -> str:
    """The runs table's columns: the model, each head's test AUC, the primary head's HIT@k, the
    champion's AUC on the same data, the best validation AUC, the duration."""
    metrics = [*(f"test_auc_{h}" for h in schema.HEADS), f"test_hit{hit_k}_{schema.PRIMARY_HEAD}",
               f"champion_test_auc_{schema.PRIMARY_HEAD}", f"best_val_auc_{schema.PRIMARY_HEAD}"]
    columns = ["attributes.`Duration`", "params.`train.model`", *(f"metrics.`{m}`" for m in metrics)]
    return json.dumps({"selectedColumns": columns, "orderByKey": "attributes.start_time", "orderByAsc": False})


class PromotionRefused(PermanentError, RuntimeError):
    """A promotion the rules do not allow; the message says why and how to override."""


class RegistryUnreachable(RuntimeError):
    """The MLflow tracking server does not answer (a retry later may succeed: not permanent)."""


def tracking_uri(cfg: Config) -> str:
    if cfg.registry.tracking_uri:
        return cfg.registry.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{storage.local_path(cfg.storage.root)}/mlflow.db"


def _set_mlflow_uris(uri: str) -> None:
    """Point MLflow's fluent API at ``uri`` without exporting it: ``mlflow.set_tracking_uri``
    also writes MLFLOW_TRACKING_URI, which would make every later config in this process (a
    reloading service, in-process DAG runs) use the first store instead of its own."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_REACHABLE: dict[str, float] = {}  # server URI → when it last answered (monotonic seconds)


def _bound_http_retries(cfg: Config) -> None:
    """MLflow's HTTP retry budget from the config, unless the environment sets its own."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.registry.http_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(cfg.registry.http_timeout_s, 1))))


def require_reachable(cfg: Config, uri: str) -> None:
    """For an MLflow server: its /health answers within the timeout, else one clear error."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")) or time.monotonic() - _REACHABLE.get(uri, -1e9) < 30:
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=cfg.registry.http_timeout_s).close()
    except urllib.error.HTTPError:
        pass  # it answered (a proxy may not route /health): reachable
    except OSError as exc:
        raise RegistryUnreachable(f"MLflow at {uri} is unreachable ({getattr(exc, 'reason', exc)})") from None
    _REACHABLE[uri] = time.monotonic()


def client(cfg: Config):
    """The MlflowClient of the configured store (one per tracking URI in this process), with the
    experiment created if needed. Every tracking and registry call of homefeed goes through here."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _bound_http_retries(cfg)
    uri = tracking_uri(cfg)
    require_reachable(cfg, uri)
    if uri.startswith("sqlite:///"):
        storage.private_file(Path(uri[len("sqlite:///") :]))
    _set_mlflow_uris(uri)
    artifacts = None
    if cfg.storage.s3_uri:  # MLflow's S3 repository: boto3, with MLFLOW_S3_ENDPOINT_URL for non-AWS servers
        artifacts = f"{cfg.storage.s3_uri}/mlflow"
    elif uri.startswith("sqlite:"):
        artifacts = (storage.local_path(cfg.storage.root).resolve() / "mlartifacts").as_uri()
    return _client(uri, cfg.registry.experiment, artifacts, runs_view(cfg.evaluation.hit_k))


UI_PORT = 5000  # where the printed `mlflow ui` serves a local store


def ui_url(cfg: Config) -> str:
    """MLflow's UI: the tracking server itself, or the printed `mlflow ui` for a local store."""
    uri = tracking_uri(cfg)
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{UI_PORT}"


def runs_page(cfg: Config, ui: str | None = None) -> str:
    """The experiment's runs table in MLflow's UI, as a fresh browser should land on it."""
    return f"{ui or ui_url(cfg)}/#/experiments/{experiment_id(cfg)}/runs?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW}"


def run_page(cfg: Config, run_id: str, artifact: str = "") -> str:
    """One run's page in MLflow's UI, or one of its artifacts there."""
    page = f"{ui_url(cfg)}/#/experiments/{experiment_id(cfg)}/runs/{run_id}"
    return f"{page}/artifacts/{artifact}" if artifact else page


def ui_command(cfg: Config, port: int = UI_PORT) -> tuple[list[str], dict[str, str], str]:
    """(command, environment, landing page) of MLflow's UI on the configured store, on 127.0.0.1,
    without MLflow's GenAI job runner (eight worker processes, 2 GiB) that homefeed never uses."""
    command = [".venv/bin/mlflow", "ui", "--backend-store-uri", tracking_uri(cfg), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return command, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, runs_page(cfg, f"http://127.0.0.1:{port}")


@contextlib.contextmanager
def _store_lock(uri: str):
    """For a SQLite store: an exclusive lock beside the file while MLflow creates or upgrades its
    tables and the experiment (two processes on a fresh store crashed in MLflow's table creation);
    a server does its own locking."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri[len("sqlite:///"):] + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@functools.lru_cache(maxsize=16)
def _client(uri: str, experiment_name: str, artifacts: str | None, view: str):
    from mlflow import MlflowClient

    tags = {EXPERIMENT_KIND: CLASSIC_ML, RUNS_VIEW_TAG: view}
    with _store_lock(uri):
        mlflow_client = MlflowClient(uri, uri)
        experiment = mlflow_client.get_experiment_by_name(experiment_name)  # creates or upgrades the tables
        if experiment is None:
            mlflow_client.create_experiment(experiment_name, artifact_location=artifacts, tags=tags)
        else:  # made before a tag existed, or with other columns
            for key, value in tags.items():
                if experiment.tags.get(key) != value:
                    mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
    return mlflow_client


def experiment_id(cfg: Config) -> str:
    experiment = client(cfg).get_experiment_by_name(cfg.registry.experiment)
    if experiment is None:  # the store was replaced under the cached client (a fresh root at the same path)
        _client.cache_clear()
        experiment = client(cfg).get_experiment_by_name(cfg.registry.experiment)
    return experiment.experiment_id


def start_run(cfg: Config, name: str, tags: dict[str, str] | None = None, started_ms: int | None = None,
              parent_run_id: str | None = None, experiment: str | None = None) -> str:
    """A new MLflow run (RUNNING until ``end_run``); its id. ``started_ms``: when the work it records
    began, when that was before the run is created; ``parent_run_id`` nests it under another run;
    ``experiment``: another experiment's id than the configured one."""
    tags = {**(tags or {}), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    return client(cfg).create_run(experiment or experiment_id(cfg), start_time=started_ms, run_name=name, tags=tags).info.run_id


SYSTEM_METRICS_EVERY_S = 10.0  # MLflow's default; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it


@contextlib.contextmanager
def system_metrics(cfg: Config, run_id: str) -> Iterator[None]:
    """CPU, memory, disk, network (and GPU where there is one) as the run's ``system/*`` metrics
    while the block runs, sampled by MLflow's own monitor."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_EVERY_S, tracking_uri=tracking_uri(cfg))
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        try:  # one sample at the end too: MLflow's monitor drops an interval cut short, so a short training had none
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as exc:  # the metrics are a convenience; training's result stands
            logging.getLogger(__name__).warning("system metrics: the last sample was not logged: %s", exc)


def end_run(cfg: Config, run_id: str, failed: bool = False, error: str = "", ended_ms: int | None = None) -> None:
    """FINISHED, or FAILED with the error as the run's ``homefeed.error`` tag (never left RUNNING)."""
    if error:
        client(cfg).set_tag(run_id, "homefeed.error", error[:4000])
    client(cfg).set_terminated(run_id, "FAILED" if failed or error else "FINISHED", end_time=ended_ms)


def run_state(cfg: Config, run_id: str) -> tuple[str, dict[str, str]]:
    """A run's status and tags."""
    run = client(cfg).get_run(run_id)
    return run.info.status, dict(run.data.tags)


def log_train_params(cfg: Config, run_id: str, train: Any) -> None:
    """The training config as ``train.<key>`` params (dicts as JSON)."""
    mlflow_client = client(cfg)
    for key, value in train.model_dump(mode="json").items():
        mlflow_client.log_param(run_id, f"train.{key}", json.dumps(value) if isinstance(value, dict) else value)


def log_metrics(cfg: Config, run_id: str, values: dict[str, float], step: int = 0) -> None:
    """Metrics in one request per 1000 (MLflow's limit); NaN (undefined) values are left out."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    _send_metrics(client(cfg), run_id, [Metric(key, float(value), now, step) for key, value in values.items() if value == value])


def log_dict(cfg: Config, run_id: str, payload: Any, path: str) -> None:
    """A JSON artifact of the run at ``path``."""
    client(cfg).log_dict(run_id, payload, path)


def log_artifact(cfg: Config, run_id: str, local_path: str | Path, directory: str | None = None) -> None:
    """A file (or, for a folder, every file in it) as artifacts of the run under ``directory``."""
    local = Path(local_path)
    if local.is_dir():
        client(cfg).log_artifacts(run_id, str(local), directory)
    else:
        client(cfg).log_artifact(run_id, str(local), directory)


def set_run_tag(cfg: Config, run_id: str, key: str, value: str) -> None:
    client(cfg).set_tag(run_id, key, value)


def set_version_tags(cfg: Config, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client(cfg).set_model_version_tag(cfg.registry.model_name, version, key, value)


def prepare_store(cfg: Config) -> None:
    """Create the store and the experiment now (tables, tags), so MLflow's UI can read it at once."""
    client(cfg)


def _send_metrics(mlflow_client, run_id: str, metrics: list) -> None:
    for start in range(0, len(metrics), 1000):  # MLflow's per-request limit
        mlflow_client.log_batch(run_id, metrics=metrics[start:start + 1000])


class StepMetrics:
    """A training's metrics onto its MLflow run while it trains: buffered, sent as one batch at
    most every ``flush_every_s`` (and on ``flush()``), so the UI's curves move without a request
    per step. A tracking server that fails costs one warning, never the training."""

    def __init__(self, uri: str, run_id: str, flush_every_s: float = 10.0):
        from mlflow import MlflowClient

        self.client, self.run_id, self.flush_every_s = MlflowClient(uri, uri), run_id, flush_every_s
        self._pending: list = []
        self._last_flush = time.monotonic()
        self._failed = False

    def log(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        if value == value:  # NaN: a head without positives in the split
            self._pending.append(Metric(key, float(value), int(time.time() * 1000), int(step)))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        pending, self._pending, self._last_flush = self._pending, [], time.monotonic()
        if not pending or self._failed:
            return
        try:
            _send_metrics(self.client, self.run_id, pending)
        except Exception as exc:  # noqa: BLE001 - tracking is not worth a training
            self._failed = True
            logging.getLogger(__name__).warning("MLflow run %s: step metrics not logged (%s); training goes on", self.run_id, exc)


# --------------------------------------------------------------------------- the served model
class HomefeedModel:
    """The pyfunc model: instance rows (pandas) → per-head probabilities and the ranking score."""

    def load_context(self, context) -> None:
        from models.zoo import load_scorer

        self.scorer = load_scorer(context.artifacts["model"])
        self.utility = json.loads(Path(context.artifacts["ranking"]).read_text())["utility"]
        # What serving needs to rebuild the training features (absent on models logged without it).
        features = context.artifacts.get("features")
        self.features = json.loads(Path(features).read_text()) if features else None
        # The pin vectors it was trained with, when learned (homefeed embed-pins); None: content vectors.
        vectors = context.artifacts.get("pin_vectors")
        self.pin_vectors = PinVectors.read(vectors) if vectors else None

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from homefeed.metrics import ranking_utility

        table = pa.Table.from_pandas(model_input, preserve_index=False)
        probs = self.scorer.predict(table)
        frame = pd.DataFrame(probs, columns=[f"p_{h}" for h in schema.HEADS])
        frame["score"] = ranking_utility(probs, schema.HEADS, self.utility)
        return frame


def _pyfunc_model():
    import mlflow.pyfunc

    return type("HomefeedPyfunc", (HomefeedModel, mlflow.pyfunc.PythonModel), {})()


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "numpy", "pandas", "pyarrow", "scikit-learn", "lightgbm", "mlflow")]


def serving_features(manifest: dict[str, Any]) -> dict[str, Any]:
    """From an instances manifest: what serving needs to compute the same features online."""
    return {
        "feature_stats": manifest["feature_stats"],
        "delay_ms": manifest["config"]["delay_ms"],
        "seq_len": manifest["config"]["seq_len"],
        "raw_root": manifest["raw_root"],
        # Learned pin vectors travel with the model (artifact pin_vectors); "none": the snapshot's content vectors.
        "pin_embeddings": manifest.get("pin_embeddings") or {"method": "none"},
    }


def log_and_register(
    cfg: Config, run_id: str, model_dir: str, input_example: pd.DataFrame, tags: dict[str, str],
    features: dict[str, Any] | None = None,
) -> str:
    """Log the model to the run, register a version, tag it and point ``challenger`` at it.

    ``features`` (see :func:`serving_features`) travels with the model so a service can score it.
    """
    import mlflow

    mlflow_client = client(cfg)
    ranking_file = Path(model_dir).parent / "ranking.json"
    storage.write_json(ranking_file, {"utility": cfg.ranking.utility})
    artifacts = {"model": str(model_dir), "ranking": str(ranking_file)}
    if features is not None:
        features_file = Path(model_dir).parent / "serving_features.json"
        storage.write_json(features_file, features)
        artifacts["features"] = str(features_file)
        if (features.get("pin_embeddings") or {}).get("path"):
            artifacts["pin_vectors"] = features["pin_embeddings"]["path"]
    # The input example's integer columns never hold missing values (the contract): MLflow's hint
    # about them is noise in every run's log.
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_pyfunc_model(),
            artifacts=artifacts,
            pip_requirements=pip_requirements(),
            input_example=input_example,
            registered_model_name=cfg.registry.model_name,
        )
    version = str(info.registered_model_version)
    all_tags = {**tags, "holdout.fraction": str(cfg.holdout.fraction), "holdout.salt": cfg.holdout.salt, "run_id": run_id}
    for key, value in all_tags.items():  # in the order they read best: model, gate, data, checks, holdout
        mlflow_client.set_model_version_tag(cfg.registry.model_name, version, key, str(value))
    mlflow_client.update_model_version(cfg.registry.model_name, version, description=version_description(all_tags))
    mlflow_client.set_registered_model_alias(cfg.registry.model_name, CHALLENGER, version)
    return version


def version_description(tags: dict[str, str]) -> str:
    """What MLflow's version page says first: what was trained on what, the gate's verdict, the
    holdout group, and that promotion belongs to homefeed (MLflow's own alias buttons skip its checks)."""
    return "\n".join([
        f"**{tags.get('model.name', 'model')}** trained on {tags.get('data.window', '?')} ({tags.get('data.rows', '?')} instance rows).",
        f"Gate: {tags.get('gate', '?')}",
        f"Holdout group: {float(tags['holdout.fraction']):.2%} of users (salt `{tags['holdout.salt']}`).",
        "Promote and roll back with `homefeed promote` / `homefeed rollback` (or the homefeed_promote DAG): they keep "
        "the holdout group and the gate. Moving the `champion` alias in MLflow's UI skips both checks.",
    ])


# --------------------------------------------------------------------------- the served model, loaded
class NoServableModel(PermanentError, RuntimeError):
    """No model behind the alias, or one logged without what serving needs."""


@dataclass(frozen=True)
class ServedModel:
    """A registered version with everything needed to score it online."""

    version: str
    scorer: Any  # models.zoo.Scorer
    utility: dict[str, float]
    feature_stats: dict[str, dict[str, float]]
    delay_ms: int
    seq_len: int
    raw_root: str
    holdout_fraction: float
    holdout_salt: str
    pin_vectors: PinVectors | None = None  # learned pin vectors it was trained with; None: the snapshot's content vectors


def load_served_model(cfg: Config, alias: str) -> ServedModel:
    """``models:/<name>@alias`` from the registry, with its feature spec and holdout tags."""
    version = alias_version(cfg, alias)
    if version is None:
        raise NoServableModel(
            f"no version of {cfg.registry.model_name!r} has the alias {alias!r} in {tracking_uri(cfg)}; "
            "run the pipeline (`homefeed run`) or promote a version: `homefeed promote --version N --reason '…'`"
        )
    return load_served_version(cfg, version)


def load_served_version(cfg: Config, version: str) -> ServedModel:
    """``models:/<name>/<version>`` with its feature spec and holdout tags (an experiment's challenger)."""
    try:
        python_model = load_python_model(f"models:/{cfg.registry.model_name}/{version}")
    except Exception as exc:  # missing or damaged files, an unreachable artifact store: one line, not MLflow's traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise NoServableModel(f"{cfg.registry.model_name} v{version}: its model cannot be loaded ({type(exc).__name__}: {first})") from None
    spec = getattr(python_model, "features", None)
    if not spec:
        raise NoServableModel(
            f"{cfg.registry.model_name} v{version} was logged without its serving feature spec "
            "(serving_features.json); retrain and promote a newer version"
        )
    tags = client(cfg).get_model_version(cfg.registry.model_name, version).tags
    missing = [t for t in HOLDOUT_TAGS if t not in tags]
    if missing:
        raise NoServableModel(f"{cfg.registry.model_name} v{version} has no holdout configuration (tags {missing})")
    return ServedModel(
        version=version, scorer=python_model.scorer, utility=python_model.utility,
        feature_stats=spec["feature_stats"], delay_ms=int(spec["delay_ms"]), seq_len=int(spec["seq_len"]),
        raw_root=spec["raw_root"], holdout_fraction=float(tags["holdout.fraction"]), holdout_salt=tags["holdout.salt"],
        pin_vectors=getattr(python_model, "pin_vectors", None),
    )


def load_python_model(model_uri: str) -> HomefeedModel:
    """The pyfunc's Python model (scorer, utility, feature spec) from ``models:/…`` or a local copy."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()


def download_model(cfg: Config, alias: str, destination: str) -> str:
    """A local copy of ``models:/<name>@alias`` (for workers that load it themselves)."""
    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(f"models:/{cfg.registry.model_name}@{alias}", dst_path=destination,
                                               tracking_uri=tracking_uri(cfg))


# --------------------------------------------------------------------------- aliases
def alias_version(cfg: Config, alias: str) -> str | None:
    """The version behind ``alias``; None only when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(cfg)
    try:
        return str(mlflow_client.get_model_version_by_alias(cfg.registry.model_name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise RegistryUnreachable(f"MLflow at {tracking_uri(cfg)} failed to answer for alias {alias!r}: {exc}") from None


def load_model_for(cfg: Config, alias: str = CHAMPION) -> tuple[str | None, "HomefeedModel | None"]:
    """The model behind ``models:/<name>@alias`` (its scorer, utility and pin vectors) and its
    version, or (None, None) if unset."""
    import mlflow.pyfunc

    version = alias_version(cfg, alias)
    if version is None:
        return None, None
    return version, mlflow.pyfunc.load_model(f"models:/{cfg.registry.model_name}@{alias}").unwrap_python_model()


@dataclass(frozen=True)
class RegistryState:
    champion: str | None
    challenger: str | None
    previous: str | None
    holdout: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"champion": self.champion, "challenger": self.challenger, "previous": self.previous, "holdout": self.holdout}


def state(cfg: Config) -> RegistryState:
    champion = alias_version(cfg, CHAMPION)
    holdout = {} if champion is None else _holdout_of(cfg, champion)
    return RegistryState(champion, alias_version(cfg, CHALLENGER), alias_version(cfg, PREVIOUS), holdout)


def gate_tags(champion_version: str | None) -> dict[str, str]:
    """The tags that record a passed gate on a version, and the champion it was compared with."""
    return {GATE_PASSED: "true", GATE_CHAMPION: champion_version or NO_CHAMPION}


@contextlib.contextmanager
def _audit_log(cfg: Config):
    """The audit log, open for appending and locked: opened before any alias moves (an audit that
    cannot be written refuses the change) and held while the champion is checked and moved."""
    path = storage.local_path(cfg.storage.root) / AUDIT_LOG
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError as exc:
        raise PromotionRefused(f"the audit log {path} cannot be written ({exc}); nothing was changed") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one registry change at a time on this storage root
        yield handle


def _audit(cfg: Config, version: str, record: dict[str, Any], log) -> None:
    log.write(json.dumps(record, sort_keys=True) + "\n")  # append-only: one JSON object per line
    log.flush()
    mlflow_client = client(cfg)
    for key, value in record.items():
        mlflow_client.set_model_version_tag(cfg.registry.model_name, version, f"audit.{record['event']}.{key}", str(value))
    run_id = mlflow_client.get_model_version(cfg.registry.model_name, version).run_id
    if run_id:
        mlflow_client.log_text(run_id, json.dumps(record, indent=2), f"audit/{record['event']}-{record['at_ms']}.json")


def _gate_refusal(tags: dict[str, str], version: str, champion: str | None) -> str | None:
    """Why ``version`` may not be promoted without ``force`` now, or None."""
    if tags.get(GATE_PASSED) != "true":
        return f"version {version} has no passed gate recorded (tag {GATE_PASSED})"
    against = tags.get(GATE_CHAMPION)
    if against != (champion or NO_CHAMPION):
        was = "no champion" if against == NO_CHAMPION else f"v{against}"
        now = "there is none" if champion is None else f"it is now v{champion}"
        return f"version {version} was gated against {was}, but {now}: re-gate it (a new retraining run)"
    return None


def _holdout(tags: dict[str, str]) -> dict[str, str]:
    return {k: tags[k] for k in HOLDOUT_TAGS if k in tags}


def _holdout_of(cfg: Config, version: str) -> dict[str, str]:
    return _holdout(client(cfg).get_model_version(cfg.registry.model_name, version).tags)


def promote(cfg: Config, version: str, reason: str, gate: str = "", force: bool = False, change_holdout: bool = False,
            actor: str | None = None, expected_champion: str | None = None) -> dict[str, Any]:
    """Point ``champion`` at ``version`` (and ``previous`` at the old champion), audited.

    ``expected_champion``: refuse unless the champion is still this version when the lock is held
    (an experiment's promotion: the challenger won against that champion, not another)."""
    from mlflow.exceptions import MlflowException

    name = cfg.registry.model_name
    mlflow_client = client(cfg)
    try:
        tags = mlflow_client.get_model_version(name, version).tags  # read once: holdout and gate come from them
    except MlflowException:
        raise PromotionRefused(f"{name} has no version {version}") from None
    if force and not reason:
        raise PromotionRefused("a forced promotion needs --reason")
    holdout = _holdout(tags)
    if set(holdout) != set(HOLDOUT_TAGS):
        raise PromotionRefused(f"version {version} carries no holdout configuration (tags {list(HOLDOUT_TAGS)}); register it again")
    missing = _missing_model_files(mlflow_client, name, version)
    if missing:
        raise PromotionRefused(f"version {version}'s model cannot be loaded: {missing}; nothing was changed")
    with _audit_log(cfg) as log:
        old = alias_version(cfg, CHAMPION)  # read under the lock: compare-and-set against this
        if expected_champion is not None and old != expected_champion:
            raise PromotionRefused(f"the champion is v{old} now, not v{expected_champion} as expected; nothing was changed")
        if old is not None and old != version:
            old_holdout = _holdout_of(cfg, old)
            if old_holdout != holdout and not change_holdout:
                raise PromotionRefused(
                    f"version {version}'s holdout {holdout} differs from champion v{old}'s {old_holdout}; "
                    "pass --change-holdout with a reason to change the holdout group"
                )
            if old_holdout != holdout and not reason:
                raise PromotionRefused("changing the holdout group needs a reason")
        refusal = None if force else _gate_refusal(tags, version, old)
        if refusal:
            raise PromotionRefused(f"{refusal}; or promote it with --force and a --reason")
        if old is not None and old != version:
            mlflow_client.set_registered_model_alias(name, PREVIOUS, old)
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
        challenger = alias_version(cfg, CHALLENGER)
        if challenger is None or int(challenger) < int(version):  # the challenger never trails the champion
            mlflow_client.set_registered_model_alias(name, CHALLENGER, version)
        record = {
            "event": "promote", "version": version, "from_version": old, "reason": reason, "gate": gate,
            "forced": force, "holdout_changed": bool(change_holdout), "actor": actor or getpass.getuser(),
            "at_ms": int(time.time() * 1000),
        }
        _audit(cfg, version, record, log)
    return record


def _missing_model_files(mlflow_client, name: str, version: str) -> str | None:
    """Why a version's model files are not there, for a local artifact store (others: None, unchecked)."""
    from urllib.parse import urlparse

    uri = mlflow_client.get_model_version_download_uri(name, version)
    if not uri.startswith(("file:", "/")):
        return None
    path = Path(urlparse(uri).path if uri.startswith("file:") else uri)
    return None if (path / "MLmodel").exists() else f"no MLmodel under {path}"


def rollback(cfg: Config, reason: str, actor: str | None = None) -> dict[str, Any]:
    """``champion`` ← ``previous``; the rolled-back version becomes ``previous``."""
    name = cfg.registry.model_name
    with _audit_log(cfg) as log:
        current, previous = alias_version(cfg, CHAMPION), alias_version(cfg, PREVIOUS)
        if previous is None:
            raise PromotionRefused(f"{name} has no '{PREVIOUS}' version to roll back to")
        mlflow_client = client(cfg)
        mlflow_client.set_registered_model_alias(name, CHAMPION, previous)
        if current is not None:
            mlflow_client.set_registered_model_alias(name, PREVIOUS, current)
        record = {
            "event": "rollback", "version": previous, "from_version": current, "reason": reason,
            "actor": actor or getpass.getuser(), "at_ms": int(time.time() * 1000),
        }
        _audit(cfg, previous, record, log)
    return record


def history(cfg: Config) -> list[dict[str, Any]]:
    log_path = storage.local_path(cfg.storage.root) / AUDIT_LOG
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


def input_example(table: pa.Table, rows: int = 3) -> pd.DataFrame:
    """A few rows of the model's inputs, with list columns as Python lists (what a JSON client would send)."""
    frame = table.select(list(schema.MODEL_INPUT_COLUMNS)).slice(0, rows).to_pandas()
    for column in frame.columns:
        if len(frame) and isinstance(frame[column].iloc[0], np.ndarray):
            # Python numbers: a JSON round trip must give back the types the signature records.
            frame[column] = frame[column].map(lambda values: values.tolist())
        elif frame[column].dtype == np.float32:
            frame[column] = frame[column].astype(np.float64)
    return frame


def apply_manual_change(cfg: Config, params: dict[str, Any], actor: str) -> dict[str, Any]:
    """The promote DAG's one call: roll back, or point ``alias`` at ``version``; audited."""
    if params.get("rollback"):
        return rollback(cfg, params.get("reason") or "manual rollback", actor=actor)
    if not params.get("version"):
        raise PromotionRefused("a version is needed unless rollback is set")
    version = str(params["version"])
    if params.get("alias", CHAMPION) == CHALLENGER:
        return stage_challenger(cfg, version, reason=params.get("reason", ""), actor=actor)
    return promote(
        cfg, version, reason=params.get("reason", ""), gate="manual",
        force=bool(params.get("force")), change_holdout=bool(params.get("change_holdout")), actor=actor,
    )


def stage_challenger(cfg: Config, version: str, reason: str, actor: str | None = None) -> dict[str, Any]:
    """Point ``challenger`` at an existing version (for a manual comparison run), audited."""
    from mlflow.exceptions import MlflowException

    try:
        client(cfg).get_model_version(cfg.registry.model_name, version)
    except MlflowException:
        raise PromotionRefused(f"{cfg.registry.model_name} has no version {version}") from None
    with _audit_log(cfg) as log:
        old = alias_version(cfg, CHALLENGER)
        client(cfg).set_registered_model_alias(cfg.registry.model_name, CHALLENGER, version)
        record = {"event": "stage", "version": version, "from_version": old, "reason": reason,
                  "actor": actor or getpass.getuser(), "at_ms": int(time.time() * 1000)}
        _audit(cfg, version, record, log)
    return record


# --------------------------------------------------------------------------- registered-model state
def model_tags(cfg: Config) -> dict[str, str]:
    """The registered model's own tags (where experiments live); empty when it does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(client(cfg).get_registered_model(cfg.registry.model_name).tags)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise RegistryUnreachable(f"MLflow at {tracking_uri(cfg)} failed to answer for {cfg.registry.model_name!r}: {exc}") from None


def set_model_tags(cfg: Config, tags: dict[str, str], delete: tuple[str, ...] = ()) -> None:
    mlflow_client = client(cfg)
    for key, value in tags.items():
        mlflow_client.set_registered_model_tag(cfg.registry.model_name, key, value)
    for key in delete:
        mlflow_client.delete_registered_model_tag(cfg.registry.model_name, key)


def version_tags(cfg: Config, version: str) -> dict[str, str] | None:
    """A version's tags; None when the version does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(client(cfg).get_model_version(cfg.registry.model_name, version).tags)
    except MlflowException:
        return None


def holdout_of_tags(tags: dict[str, str]) -> dict[str, str]:
    """The holdout configuration a version carries (``holdout.fraction``, ``holdout.salt``)."""
    return _holdout(tags)


@contextlib.contextmanager
def audited_change(cfg: Config):
    """The registry's change lock with its audit log: yields ``record(version, record_dict)``."""
    with _audit_log(cfg) as log:
        yield lambda version, record: _audit(cfg, version, record, log)


def log_version_metrics(cfg: Config, version: str, values: dict[str, float]) -> str | None:
    """Metrics onto the run that registered ``version`` (an experiment's figures); the run id."""
    run_id = client(cfg).get_model_version(cfg.registry.model_name, version).run_id
    if run_id:
        log_metrics(cfg, run_id, values)
    return run_id
