"""Training instances: schema, keys, labels, weights, sequence shape and the leakage check.

The dataset has two tables (``jobs/build_instances.py``): ``expectations`` run on ``rows`` (one
per impression), ``sequence_expectations`` on ``sequences`` (one per request). The leakage check
reads each sequence with its own request time; ``homefeed.validation`` also proves that every
row's ``sequence_key`` resolves to a sequence of the same user and time, so "every action of a
row's sequence happened before that row's ts - delay" still holds for every row.

Label rates are checked on the unsampled splits (validation and test) against
``validation.label_rate_bounds``, since the train split is negatively downsampled.
"""

import great_expectations.expectations as gxe

from homefeed import schema
from homefeed.config import Config

TABLE = None
ROWS = schema.ROWS_DIR
SEQUENCES = schema.SEQUENCES_DIR


def expectations(cfg: Config) -> list:
    return [
        *[gxe.ExpectColumnToExist(column=c) for c in (*schema.METADATA_COLUMNS, *schema.LABEL_COLUMNS, schema.SAMPLE_WEIGHT, schema.SEQUENCE_KEY)],
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("request_id", "user_id", "pin_id", "ts", schema.SAMPLE_WEIGHT, schema.SEQUENCE_KEY)],
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["request_id", "pin_id"]),
        *[gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1]) for c in schema.LABEL_COLUMNS],
        gxe.ExpectColumnValuesToBeBetween(column=schema.SAMPLE_WEIGHT, min_value=1.0),
        gxe.ExpectColumnValuesToBeInSet(column=schema.SEGMENT, value_set=list(schema.SEGMENTS)),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in schema.DENSE_FEATURES],
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]


def sequence_expectations(cfg: Config) -> list:
    delay = cfg.instances.delay_ms
    seq = schema.SEQUENCE_COLUMNS
    return [
        *[gxe.ExpectColumnToExist(column=c) for c in schema.SEQUENCE_TABLE_COLUMNS],
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in (schema.SEQUENCE_KEY, "user_id", "ts", *seq)],
        gxe.ExpectColumnValuesToBeUnique(column=schema.SEQUENCE_KEY),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "ts"]),
        gxe.UnexpectedRowsExpectation(
            description=f"sequences hold at most {cfg.validation.max_seq_len} actions, in three equal-length arrays",
            unexpected_rows_query=(
                f"SELECT * FROM {{batch}} WHERE size({seq[0]}) > {cfg.validation.max_seq_len} "
                f"OR size({seq[0]}) != size({seq[1]}) OR size({seq[0]}) != size({seq[2]})"
            ),
        ),
        gxe.UnexpectedRowsExpectation(
            description=f"leakage: every sequence action happened before ts - {delay} ms",
            unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE exists({schema.SEQ_TS}, t -> t >= ts - {delay})",
        ),
        gxe.UnexpectedRowsExpectation(
            description="sequences are newest first",
            unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE {schema.SEQ_TS} != reverse(array_sort({schema.SEQ_TS}))",
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]


def label_rate_expectations(cfg: Config) -> list:
    """Run on the unsampled splits only: the true per-head label rates."""
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *[
            gxe.ExpectColumnMeanToBeBetween(column=schema.label_column(head), min_value=low, max_value=high)
            for head, (low, high) in cfg.validation.label_rate_bounds.items()
        ],
    ]
