"""Raw actions: vocabulary, keys, and each row inside its dt partition."""

import great_expectations.expectations as gxe

from homefeed import schema
from homefeed.config import Config

TABLE = schema.ACTIONS


def expectations(cfg: Config) -> list:
    return [
        *[gxe.ExpectColumnToExist(column=c) for c in [*schema.ACTIONS_SCHEMA.fieldNames(), schema.DT]],
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in schema.ACTIONS_SCHEMA.fieldNames()],
        gxe.ExpectColumnValuesToBeInSet(column="action", value_set=list(schema.ACTION_NAMES)),
        gxe.UnexpectedRowsExpectation(
            description="ts falls inside its dt partition (UTC day)",
            unexpected_rows_query="SELECT * FROM {batch} WHERE date_format(timestamp_millis(ts), 'yyyy-MM-dd') != dt",
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
