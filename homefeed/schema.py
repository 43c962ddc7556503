"""The one source of truth for table names, column names, the action vocabulary and features.

Every other module (the simulator, the KuaiRand importer, the Spark instance job, the GX suites,
the torch loader, serving) imports names from here instead of spelling them again.

Raw contract (Parquet, partitioned by ``dt`` = YYYY-MM-DD of the row's timestamp in UTC):

- ``impressions``: one pin shown to a user in one home-feed request.
- ``actions``: what a user did to a pin (repin, click, ...), with its own timestamp.
- ``pins`` / ``users``: attribute snapshots taken at the start of the log window (``dt`` is the
  snapshot date), so no attribute carries information from after an impression.
"""

from __future__ import annotations

from dataclasses import dataclass


# --------------------------------------------------------------------------- tables
IMPRESSIONS = "impressions"
ACTIONS = "actions"
PINS = "pins"
USERS = "users"
RAW_TABLES = (IMPRESSIONS, ACTIONS, PINS, USERS)

DT = "dt"
SUCCESS_MARKER = "_SUCCESS"
# Leading "_": Parquet readers (pandas, pyarrow.dataset, Spark) skip it, so a dataset directory
# reads as its tables without filters. Datasets published before the rename hold the old name.
MANIFEST = "_manifest.json"
LEGACY_MANIFEST = "manifest.json"

# --------------------------------------------------------------------------- sources
SOURCES = ("follow", "pfy")


# --------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Action:
    name: str
    code: int  # 0 is reserved for sequence padding
    positive: bool


ACTION_VOCAB: tuple[Action, ...] = (
    Action("repin", 1, True),
    Action("click", 2, True),
    Action("closeup", 3, True),
    Action("like", 4, True),
    Action("comment", 5, True),
    Action("hide", 6, False),
)
ACTIONS_BY_NAME = {a.name: a for a in ACTION_VOCAB}
ACTION_NAMES = tuple(a.name for a in ACTION_VOCAB)
ACTION_CODES = {a.name: a.code for a in ACTION_VOCAB}
ACTION_NAMES_BY_CODE = {a.code: a.name for a in ACTION_VOCAB}
POSITIVE_ACTIONS = tuple(a.name for a in ACTION_VOCAB if a.positive)
NEGATIVE_ACTIONS = tuple(a.name for a in ACTION_VOCAB if not a.positive)
NUM_ACTION_CODES = max(a.code for a in ACTION_VOCAB) + 1  # including padding 0
PADDING_ID = 0

# The heads a model predicts; each becomes a `label_<head>` column of the instances.
HEADS = ("repin", "click", "closeup", "hide")
PRIMARY_HEAD = "repin"
NEGATIVE_HEAD = "hide"


def label_column(head: str) -> str:
    return f"label_{head}"


LABEL_COLUMNS = tuple(label_column(h) for h in HEADS)

# --------------------------------------------------------------------------- models
# Every name `train.model` accepts: Pinnability's baselines, then the neural ranker by its sequence
# module. The names live here, below the config that checks them; ``models`` builds each one.
BASELINE_NAMES = ("lr", "gbdt")
SEQUENCE_MODULE_NAMES = ("none", "avgpool", "cnn", "rnn", "lstm", "transformer", "transact_v10", "transact_v11")
MODEL_NAMES = BASELINE_NAMES + SEQUENCE_MODULE_NAMES

# --------------------------------------------------------------------------- online experiments
# What an experiment's readout reports per arm (homefeed.readout): per user over the days after
# the user's first exposure, and one ratio metric (repins per request, by the delta method).
EXPERIMENT_METRICS = ("repins_per_user", "clicks_per_user", "closeups_per_user", "hides_per_user", "repins_per_request")
PRIMARY_EXPERIMENT_METRIC = "repins_per_user"

# --------------------------------------------------------------------------- segments
SEGMENTS = ("core", "casual", "new", "resurrected")
CORE_SEGMENT = "core"
# Evaluation slices (homefeed/evaluate.py defines each): user segment and candidate source.
SLICES = ("core", "non_core", "follow", "pfy")

# --------------------------------------------------------------------------- raw schemas
# Column types in Spark's DDL names; Spark and Arrow schemas are derived on demand, so importing
# this module needs neither pyspark nor pyarrow (serving and GPU trainers do without Spark).
EMBEDDING_DIM = 16
PIN_COUNT_COLUMNS = ("repin_count", "click_count", "impression_count")
USER_COUNT_COLUMNS = ("board_count", "follower_count", "pin_count", "actions_28d")
GENDERS = ("unknown", "female", "male")

RAW_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    IMPRESSIONS: (
        ("request_id", "string"), ("user_id", "bigint"), ("pin_id", "bigint"),
        ("ts", "bigint"), ("source", "string"), ("position", "int"),
    ),
    ACTIONS: (("user_id", "bigint"), ("pin_id", "bigint"), ("ts", "bigint"), ("action", "string")),
    PINS: (
        ("pin_id", "bigint"), ("embedding", "array<float>"), ("created_ts", "bigint"), ("category", "int"),
        ("owner_id", "bigint"), *[(c, "bigint") for c in PIN_COUNT_COLUMNS], ("spam_score", "double"),
    ),
    USERS: (
        ("user_id", "bigint"), ("signup_ts", "bigint"), ("last_active_ts", "bigint"),
        *[(c, "bigint") for c in USER_COUNT_COLUMNS], ("gender", "string"), ("country", "string"),
    ),
}


def columns(table: str) -> tuple[str, ...]:
    return tuple(name for name, _ in RAW_COLUMNS[table])


def spark_schema(table: str):
    """The table's contract as a Spark StructType (without the ``dt`` partition column)."""
    from pyspark.sql import types as T

    scalar = {"string": T.StringType(), "bigint": T.LongType(), "int": T.IntegerType(), "double": T.DoubleType(), "float": T.FloatType()}

    def spark_type(ddl: str) -> T.DataType:
        if ddl.startswith("array<"):
            return T.ArrayType(spark_type(ddl[len("array<") : -1]))
        return scalar[ddl]

    return T.StructType([T.StructField(name, spark_type(ddl)) for name, ddl in RAW_COLUMNS[table]])


def arrow_schema(table: str, with_dt: bool = True):
    """The table's contract as an Arrow schema, as the raw writers produce it."""
    import pyarrow as pa

    scalar = {"string": pa.string(), "bigint": pa.int64(), "int": pa.int32(), "double": pa.float64(), "float": pa.float32()}

    def arrow_type(ddl: str) -> pa.DataType:
        if ddl.startswith("array<"):
            return pa.list_(arrow_type(ddl[len("array<") : -1]))
        return scalar[ddl]

    fields = [pa.field(name, arrow_type(ddl), nullable=False) for name, ddl in RAW_COLUMNS[table]]
    if with_dt:
        fields.append(pa.field(DT, pa.string(), nullable=False))
    return pa.schema(fields)


RAW_KEYS: dict[str, tuple[str, ...]] = {
    IMPRESSIONS: ("request_id", "pin_id"),
    ACTIONS: ("user_id", "pin_id", "ts", "action"),
    PINS: ("pin_id",),
    USERS: ("user_id",),
}

# --------------------------------------------------------------------------- instances
SEQ_LEN = 100
SEQ_PIN_ID = "seq_pin_id"
SEQ_ACTION = "seq_action"
SEQ_TS = "seq_ts"
SEQUENCE_COLUMNS = (SEQ_PIN_ID, SEQ_ACTION, SEQ_TS)
# In a model batch the seq_* tensors hold each distinct sequence once, (U, L); this (B,) index
# maps every row to its sequence.
SEQ_INDEX = "seq_index"

SPLIT = "split"
SPLITS = ("train", "validation", "test")
FOLD = "fold"
NUM_FOLDS = 10
SAMPLE_WEIGHT = "sample_weight"
SEGMENT = "segment"

METADATA_COLUMNS = ("request_id", "user_id", "pin_id", "ts", "source", "position", DT, SEGMENT)

# Count features get log1p, then every dense feature is standardised with train-window stats.
DENSE_FEATURES = (
    "pin_repin_count",
    "pin_click_count",
    "pin_impression_count",
    "pin_age_hours",
    "pin_spam_score",
    "user_board_count",
    "user_follower_count",
    "user_pin_count",
    "user_account_age_days",
    "user_category_engagements",
    "user_owner_engagements",
    "user_prior_actions",
    "feed_position",
)
LOG1P_FEATURES = tuple(f for f in DENSE_FEATURES if f not in ("pin_spam_score", "feed_position"))
# Categorical features with their cardinality (index 0 is "unknown").
NUM_CATEGORIES = 32
CATEGORICAL_FEATURES: dict[str, int] = {
    "pin_category": NUM_CATEGORIES,
    "source_id": len(SOURCES) + 1,
    "user_gender": len(GENDERS) + 1,
}
PIN_EMBEDDING = "pin_embedding"
# What a served model reads per candidate (labels, weights and bookkeeping columns are not inputs).
MODEL_INPUT_COLUMNS = (
    "user_id", "pin_id", "ts", "source", "position",
    *DENSE_FEATURES, *CATEGORICAL_FEATURES, PIN_EMBEDDING, *SEQUENCE_COLUMNS,
)
# The published instance dataset: two tables under one manifest, both bucketed by user.
#   rows/split=S/bucket=B/       one row per kept impression, SEQUENCE_KEY naming its sequence
#   sequences/split=S/bucket=B/  one row per distinct (user, cut-off): the request's history
ROWS_DIR = "rows"
SEQUENCES_DIR = "sequences"
SEQUENCE_KEY = "sequence_key"
BUCKET = "bucket"
ROW_COLUMNS = (
    *METADATA_COLUMNS, *LABEL_COLUMNS, SAMPLE_WEIGHT, FOLD, *DENSE_FEATURES, *CATEGORICAL_FEATURES, SEQUENCE_KEY,
)
SEQUENCE_TABLE_COLUMNS = (SEQUENCE_KEY, "user_id", "ts", *SEQUENCE_COLUMNS)
# Published beside the instances (ignored by Parquet readers: it starts with "_"); the one copy
# of each pin's content embedding, joined by pin id wherever a row needs it.
PIN_FEATURES_DIR = "_pin_features"

# A run directory's record of a stage that failed (``<stage>.failed.json``), for the run report.
STAGE_FAILED_SUFFIX = ".failed.json"
