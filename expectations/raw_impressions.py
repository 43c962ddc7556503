"""Raw impressions: the contract's columns, keys, sources, and each row inside its dt partition."""

import great_expectations.expectations as gxe

from expectations.common import column_types, contract_rules
from homefeed import schema
from homefeed.config import Config

TABLE = schema.IMPRESSIONS


def expectations(cfg: Config) -> list:
    return [
        *column_types(schema.spark_schema(schema.IMPRESSIONS)),
        *[gxe.ExpectColumnToExist(column=c) for c in [*schema.columns(schema.IMPRESSIONS), schema.DT]],
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("request_id", "user_id", "pin_id", "ts", "source")],
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["request_id", "pin_id"]),
        gxe.ExpectColumnValuesToBeInSet(column="source", value_set=list(schema.SOURCES)),
        gxe.ExpectColumnValuesToBeBetween(column="position", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="pin_id", min_value=1),
        *contract_rules(schema.IMPRESSIONS),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
