"""Typed, validated configuration.

Every default lives once, in the models below (``homefeed config`` prints them, with any overlays
applied). Overlays are applied in order:
files given with ``--config`` or listed in ``HOMEFEED_CONFIG`` (``:``-separated), then single keys
from the environment (``HOMEFEED__TRAIN__EPOCHS=3``; values are parsed as YAML). Unknown keys and
bad values fail fast with the key's dotted path in the message.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from homefeed import schema
from homefeed.errors import PermanentError

ENV_PREFIX = "HOMEFEED__"
CONFIG_FILES_ENV = "HOMEFEED_CONFIG"


class ConfigError(PermanentError, ValueError):
    """A configuration that cannot be used; the message names the offending key."""


class _Section(BaseModel):
    # No NaN or infinity in any number: ``learning_rate: .inf`` is a mistake, not a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info) -> Any:
        # Pydantic's lax mode reads true as 1; ``HOMEFEED__TRAIN__EPOCHS=true`` is a mistake too.
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in (int, float):
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


def _check_heads(value: dict[str, Any], what: str) -> dict[str, Any]:
    unknown = set(value) - set(schema.HEADS)
    if unknown:
        raise ValueError(f"{what} names unknown heads {sorted(unknown)}; heads are {list(schema.HEADS)}")
    return value


class StorageConfig(_Section):
    root: str = ".homefeed"
    # S3 as the storage of record (e.g. s3://homefeed): raw data is read from it, every stage's
    # outputs are published to <s3_uri>/runs/<run>/, MLflow artifacts go to <s3_uri>/mlflow.
    s3_uri: str = ""

    @field_validator("s3_uri")
    @classmethod
    def _s3_scheme(cls, value: str) -> str:
        if value and not value.startswith("s3://"):
            raise ValueError(f"storage.s3_uri must start with s3://, got {value!r}")
        return value.rstrip("/")


class SimulatorConfig(_Section):
    start_date: date = date(2026, 1, 5)
    days: int = Field(7, ge=3, le=365)
    impressions: int = Field(200_000, ge=1_000)
    seed: int = 7
    candidates_min: int = Field(20, ge=3)
    candidates_max: int = Field(50, ge=3)
    users: int | None = Field(None, ge=10)  # empty: one user per 300 impressions (at least 50)

    @model_validator(mode="after")
    def _candidates_ordered(self) -> "SimulatorConfig":
        if self.candidates_min > self.candidates_max:
            raise ValueError("candidates_min must be <= candidates_max")
        return self


class InstancesConfig(_Section):
    delay_ms: int = Field(30_000, ge=0)
    attribution_window_ms: int = Field(3_600_000, gt=0)
    seq_len: int = Field(schema.SEQ_LEN, ge=1, le=1000)
    positive_rate: float = Field(1.0, gt=0.0, le=1.0)
    negative_rate: float = Field(0.5, gt=0.0, le=1.0)
    seed: int = 17
    # The pipeline adds the ranking service's logged events (serving.event_log) to the raw actions.
    use_served_events: bool = True
    validation_days: int = Field(1, ge=1)
    test_days: int = Field(1, ge=1)
    shuffle_partitions: int = Field(8, ge=1)
    # Both instance tables are bucketed by user into this many buckets (jobs/build_instances.py).
    buckets: int = Field(8, ge=1, le=1024)


class SparkConfig(_Section):
    master: str = "local[2]"
    driver_memory: str = "4g"


class DriftConfig(_Section):
    """Largest change from the previous successful run's instances that still passes."""

    enabled: bool = True
    label_rate_relative: float = Field(0.5, gt=0)
    feature_mean_std: float = Field(0.5, gt=0)
    feature_quantile_std: float = Field(1.0, gt=0)
    null_rate_absolute: float = Field(0.05, ge=0)
    seq_len_relative: float = Field(0.5, gt=0)
    seq_len_empty_absolute: float = Field(0.2, ge=0)


class ValidationConfig(_Section):
    label_rate_bounds: dict[str, tuple[float, float]] = Field(default_factory=lambda: {
        "repin": (0.001, 0.5), "click": (0.005, 0.9), "closeup": (0.001, 0.9), "hide": (0.0, 0.2)})
    # The instance job refuses a window where more impressions than this name pins absent from
    # the pins snapshot (their features would all be defaults).
    max_unknown_pin_rate: float = Field(0.01, ge=0, le=1)
    max_seq_len: int = schema.SEQ_LEN
    drift: DriftConfig = DriftConfig()

    @field_validator("label_rate_bounds")
    @classmethod
    def _bounds(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        _check_heads(value, "label_rate_bounds")
        for head, (low, high) in value.items():
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"bounds for {head} must satisfy 0 <= low <= high <= 1, got {[low, high]}")
        return value


class TrainConfig(_Section):
    model: str = "transact_v11"
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(512, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    patience: int = Field(2, ge=1)
    num_processes: int = Field(1, ge=1)
    use_gpu: Literal["auto", True, False] = "auto"
    seed: int = 11
    d_model: int = Field(32, ge=1)
    num_layers: int = Field(1, ge=1)
    num_heads: int = Field(2, ge=1)
    dim_feedforward: int = Field(32, ge=1)
    embedding_dim: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    time_window_ms: int = Field(86_400_000, ge=0)
    time_window_mask_prob: float = Field(0.5, ge=0, le=1)
    # Sequence tokens with the pins' learned id embeddings beside their content vectors (issue 20's
    # experiment: does an id tell a user's candidates apart where a random-projection content cannot?).
    id_tokens: bool = False
    # How many of each action type the request's sequence holds (log1p) among the flat features, for
    # every model, `none` included (issue 20's experiment: how much of what the sequence modules gain
    # is the user's propensity, which a count carries without reading the sequence?).
    sequence_counts: bool = False
    head_weights: dict[str, float] = Field(default_factory=lambda: {h: 1.0 for h in schema.HEADS})
    num_threads: int = Field(2, ge=1)
    # What the training loader shuffles: single rows, or whole requests (a request's candidates
    # stay in one batch, so its sequence is carried and encoded once: 7-20x faster LSTM steps,
    # 2x avg-pool, nothing for TransAct). Rows by default: on the `make run` data TransAct v1.1
    # reached validation repin AUC 0.735 with rows and 0.724 with requests (one seed each).
    shuffle_unit: Literal["request", "row"] = "row"
    # torch.compile TransAct's sequence module before training (models.compilation; eager with a
    # line saying why when compiling fails). Kernels are cached under <storage root>/compile-cache.
    compile: bool = False
    # LR/GBDT model selection as in the Pinnability seed: "time" (fit on the train days, check on
    # the validation day), "kfold" (cross-validation over the user folds of the train days, then
    # a fit on all of them) or "split_90_10" (fit on 9 user folds, check on the 10th).
    baseline_validation: Literal["time", "kfold", "split_90_10"] = "time"
    cv_folds: int = Field(schema.NUM_FOLDS, ge=2, le=schema.NUM_FOLDS)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in schema.MODEL_NAMES:
            raise ValueError(f"unknown model {value!r}; choose one of {list(schema.MODEL_NAMES)}")
        return value

    @field_validator("head_weights")
    @classmethod
    def _heads(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_heads(value, "head_weights")


class RankingConfig(_Section):
    utility: dict[str, float] = Field(default_factory=lambda: {"repin": 1.0, "click": 0.5, "closeup": 0.25, "hide": -2.0})

    @field_validator("utility")
    @classmethod
    def _heads(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_heads(value, "utility")


class EvaluationConfig(_Section):
    hit_k: int = Field(3, ge=1)
    bootstrap_samples: int = Field(200, ge=0)
    seed: int = 5


class GatesConfig(_Section):
    min_auc: dict[str, float] = Field(default_factory=lambda: {"repin": 0.55})
    # The challenger may be at most this much below the champion.
    max_auc_drop: dict[str, float] = Field(default_factory=lambda: {"repin": 0.01})
    max_hit_drop: dict[str, float] = Field(default_factory=lambda: {"repin": 0.02})
    max_hide_hit_rise: float | None = 0.02
    # Slices (homefeed.evaluate.SLICES) whose metrics must pass the same checks as the whole set.
    slices: list[str] = Field(default_factory=list)

    @field_validator("min_auc", "max_auc_drop", "max_hit_drop")
    @classmethod
    def _heads(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_heads(value, "gate thresholds")

    @field_validator("slices")
    @classmethod
    def _known_slices(cls, value: list[str]) -> list[str]:
        unknown = set(value) - set(schema.SLICES)
        if unknown:
            raise ValueError(f"unknown slices {sorted(unknown)}; slices are {list(schema.SLICES)}")
        return value


class RegistryConfig(_Section):
    model_name: str = "homefeed-ranker"
    experiment: str = "homefeed"
    # Empty: MLFLOW_TRACKING_URI, else SQLite under the storage root. Set, it wins over the
    # environment (a simulation keeps its models out of the registry the shell points at).
    tracking_uri: str = ""
    # An MLflow server (http[s]://) that does not answer within this budget is unreachable: one
    # clear error, not minutes of MLflow's own retries (7 × exponential backoff by default).
    http_timeout_s: float = Field(10.0, gt=0, le=300)
    http_retries: int = Field(2, ge=0, le=10)


class HoldoutConfig(_Section):
    fraction: float = Field(0.01, ge=0.0, lt=1.0)
    salt: str = Field("homefeed-holdout-v1", min_length=1)


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    alias: str = Field("champion", min_length=1)
    max_candidates: int = Field(1000, ge=1)
    # Larger request bodies get 413 unread (1,000 candidates with a 100-event sequence ≈ 80 kB).
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # /rank requests in flight (scored or waiting for a worker thread); beyond, 503 at once.
    max_inflight: int = Field(32, ge=1)
    # POST /events refuses an event dated further than this past the service's clock.
    max_event_skew_ms: int = Field(300_000, ge=0)
    # Where the pins/users snapshot is read; empty: the raw root the champion was trained from.
    features_root: str = ""
    # Seconds between checks of the alias (0: only POST /admin/reload reloads).
    reload_poll_s: float = Field(30.0, ge=0)
    # Candidates are scored as if shown here (the position-bias feature has no value before ranking).
    position: int = Field(0, ge=0)
    # Users' action sequences: empty → SQLite under the storage root (the embedded default);
    # redis://host:port/db → a Redis server (homefeed.sequence_store says why both).
    sequence_store: str = ""
    # Actions kept per user beyond the model's sequence length (late events, the leakage delay).
    sequence_margin: int = Field(100, ge=0)
    # A store slower than this is unreachable: /rank answers without the sequence, /events 503.
    store_timeout_s: float = Field(0.25, gt=0, le=30)
    # On start, fill the store from the champion's raw action log (only what it does not hold yet).
    bootstrap: bool = True
    # Acknowledged events, kept as a raw root's `actions` table; empty → <storage root>/events.
    event_log: str = ""
    event_log_roll_events: int = Field(10_000, ge=1)
    # Processes serving on one socket (uvicorn workers); above 1, /metrics adds all of them up.
    workers: int = Field(1, ge=1, le=64)
    # torch.compile each loaded model's TransAct (champion, challenger, pool scoring) and warm it
    # before the first request (seconds at load; models.compilation says how long, or why not).
    compile: bool = False
    # Bearer token for POST /events and /admin/*; required when the service listens beyond loopback.
    token: str = Field("", json_schema_extra={"secret": True})

    @field_validator("sequence_store")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://", "sqlite:///")):
            raise ValueError(f"serving.sequence_store must be empty, redis://host:port/db or sqlite:////path; got {value!r}")
        return value


class MonitorConfig(_Section):
    # Stale when the primary head's AUC on a new day falls this far below the first day after training…
    max_auc_drop: float = Field(0.02, gt=0, lt=1)
    # …or when the champion's training window ended more than this many days before the day scored.
    max_age_days: int = Field(7, ge=0)
    # Days with fewer impressions are recorded but do not decide staleness (their AUC is noise).
    min_impressions: int = Field(500, ge=1)


class DecisionConfig(_Section):
    """When an experiment's readout says promote, keep the champion, or continue (homefeed.readout)."""

    primary_metric: str = schema.PRIMARY_EXPERIMENT_METRIC
    alpha: float = Field(0.05, gt=0, lt=0.5)
    # A sample-ratio mismatch this unlikely under the configured split means the data are broken.
    srm_alpha: float = Field(0.001, gt=0, lt=0.5)
    min_users_per_arm: int = Field(1000, ge=1)
    min_days: int = Field(7, ge=1)
    # Guardrail metric → largest tolerated relative harm (an increase: these count bad outcomes).
    guardrails: dict[str, float] = Field(default_factory=lambda: {"hides_per_user": 0.02})
    # Decide on the CUPED-adjusted figures (the 14 days before the start as the covariate).
    cuped: bool = True

    @field_validator("primary_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in schema.EXPERIMENT_METRICS:
            raise ValueError(f"unknown metric {value!r}; metrics are {list(schema.EXPERIMENT_METRICS)}")
        return value

    @field_validator("guardrails")
    @classmethod
    def _known_guardrails(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(schema.EXPERIMENT_METRICS)
        if unknown:
            raise ValueError(f"unknown guardrail metrics {sorted(unknown)}; metrics are {list(schema.EXPERIMENT_METRICS)}")
        return value


class ExperimentsConfig(_Section):
    # Default share of the non-holdout users in an experiment (split evenly into control and treatment).
    traffic: float = Field(0.2, gt=0, le=1)
    # Days before the start whose counts are the CUPED covariate.
    pre_period_days: int = Field(14, ge=0)
    # The homefeed_experiment DAG stops the experiment with --promote on a `promote` verdict.
    auto_promote: bool = False
    decision: DecisionConfig = DecisionConfig()


class EmbeddingsConfig(_Section):
    """Learned pin embeddings (``homefeed embed-pins``, jobs/embed_pins.py): a PinSage stand-in."""

    # none: the pins' content vectors as they are; word2vec: item2vec over each user's time-ordered
    # engaged pins; als: implicit ALS on the user × pin engagement counts (both Spark MLlib).
    method: Literal["none", "word2vec", "als"] = "none"
    # The width of a learned vector; the content vectors' by default, so either can stand in.
    dim: int = Field(schema.EMBEDDING_DIM, ge=2, le=512)
    window: int = Field(5, ge=1)  # word2vec's context window, in engaged pins
    min_engagements: int = Field(5, ge=1)  # fewer: the pin keeps its (projected) content vector
    iterations: int = Field(1, ge=1)
    seed: int = 7
    # The GX suite's bounds (expectations/pin_embeddings.py): the share of pins learned, the largest norm.
    min_coverage: float = Field(0.05, ge=0.0, le=1.0)
    max_norm: float = Field(100.0, gt=0.0)


class Config(_Section):
    storage: StorageConfig = StorageConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    instances: InstancesConfig = InstancesConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    spark: SparkConfig = SparkConfig()
    validation: ValidationConfig = ValidationConfig()
    train: TrainConfig = TrainConfig()
    ranking: RankingConfig = RankingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    gates: GatesConfig = GatesConfig()
    registry: RegistryConfig = RegistryConfig()
    holdout: HoldoutConfig = HoldoutConfig()
    serving: ServingConfig = ServingConfig()
    monitor: MonitorConfig = MonitorConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()

    def redacted(self) -> dict[str, Any]:
        """The config as JSON with every secret field (``json_schema_extra={"secret": True}``) that
        is set replaced by a marker: what run directories, MLflow and reports record."""
        return _redact(self, self.model_dump(mode="json"))

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """A copy with a nested dict of overrides applied and validated again."""
        return parse_config(_deep_merge(self.model_dump(mode="json"), overrides))


REDACTED = "***redacted***"


def _redact(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            dumped[name] = _redact(value, dumped[name])
        elif (info.json_schema_extra or {}).get("secret") and value:
            dumped[name] = REDACTED
    return dumped


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _is_text_field(path: list[str]) -> bool:
    """Whether the dotted key names a plain ``str`` field of the config model."""
    model: Any = Config
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return False
        model = field.annotation
    return model is str


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or raw == "":
            continue  # empty, as an env file's `HOMEFEED__SERVING__TOKEN=` writes it: the default (YAML would read null)
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if _is_text_field(path):  # a token "123456" or "s3cret #2024" is text, not a YAML number or comment
            node[path[-1]] = raw
            continue
        try:
            node[path[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise ConfigError(f"environment variable {name}={raw!r} is not a valid YAML value ({problem})") from None
    return overrides


def parse_config(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "<root>"
            problems.append(f"{key}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def default_config_dict() -> dict[str, Any]:
    """Every default, from the models above: their one home (`homefeed config` prints them)."""
    return Config().model_dump(mode="json")


def load_config(
    files: list[str | Path] | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Defaults, then overlay files, then environment keys, then explicit overrides."""
    environ = dict(os.environ if environ is None else environ)
    data = default_config_dict()
    overlay_files = [Path(f) for f in environ.get(CONFIG_FILES_ENV, "").split(":") if f]
    overlay_files += [Path(f) for f in files or []]
    for path in overlay_files:
        data = _deep_merge(data, _read_yaml(path))
    data = _deep_merge(data, _env_overrides(environ))
    data = _deep_merge(data, overrides or {})
    return parse_config(data)
