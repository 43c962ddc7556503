"""Training instances: schema, keys, labels, weights, sequence shape and the leakage check.

Label rates are checked on the unsampled splits (validation and test) against
``validation.label_rate_bounds``, since the train split is negatively downsampled.
"""

import great_expectations.expectations as gxe

from homefeed import schema
from homefeed.config import Config

TABLE = None


def expectations(cfg: Config) -> list:
    delay = cfg.instances.delay_ms
    seq = schema.SEQUENCE_COLUMNS
    return [
        *[gxe.ExpectColumnToExist(column=c) for c in (*schema.METADATA_COLUMNS, *schema.LABEL_COLUMNS, schema.SAMPLE_WEIGHT, *seq)],
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("request_id", "user_id", "pin_id", "ts", schema.SAMPLE_WEIGHT)],
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["request_id", "pin_id"]),
        *[gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1]) for c in schema.LABEL_COLUMNS],
        gxe.ExpectColumnValuesToBeBetween(column=schema.SAMPLE_WEIGHT, min_value=1.0),
        gxe.ExpectColumnValuesToBeInSet(column=schema.SEGMENT, value_set=list(schema.SEGMENTS)),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in schema.DENSE_FEATURES],
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
