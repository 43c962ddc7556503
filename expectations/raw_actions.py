"""Raw actions: vocabulary, keys, and each row inside its dt partition."""

import great_expectations.expectations as gxe

from expectations.common import column_types, contract_rules
from homefeed import schema
from homefeed.config import Config

TABLE = schema.ACTIONS


def expectations(cfg: Config) -> list:
    return [
        *column_types(schema.spark_schema(schema.ACTIONS)),
        *[gxe.ExpectColumnToExist(column=c) for c in [*schema.columns(schema.ACTIONS), schema.DT]],
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in schema.columns(schema.ACTIONS)],
        gxe.ExpectColumnValuesToBeInSet(column="action", value_set=list(schema.ACTION_NAMES)),
        *contract_rules(schema.ACTIONS),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
