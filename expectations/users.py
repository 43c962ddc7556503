"""User snapshot: unique ids, counts >= 0, known genders."""

import great_expectations.expectations as gxe

from expectations.common import column_types, contract_rules
from homefeed import schema
from homefeed.config import Config

TABLE = schema.USERS


def expectations(cfg: Config) -> list:
    return [
        *column_types(schema.spark_schema(schema.USERS)),
        *[gxe.ExpectColumnToExist(column=c) for c in schema.columns(schema.USERS)],
        gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
        gxe.ExpectColumnValuesToBeUnique(column="user_id"),
        *contract_rules(schema.USERS),  # counts >= 0
        gxe.ExpectColumnValuesToBeInSet(column="gender", value_set=list(schema.GENDERS)),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
