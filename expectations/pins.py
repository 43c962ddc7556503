"""Pin snapshot: unique ids, counts >= 0, embeddings of the right length and finite."""

import great_expectations.expectations as gxe

from expectations.common import column_types, contract_rules
from homefeed import schema
from homefeed.config import Config

TABLE = schema.PINS


def expectations(cfg: Config) -> list:
    return [
        *column_types(schema.spark_schema(schema.PINS)),
        *[gxe.ExpectColumnToExist(column=c) for c in schema.columns(schema.PINS)],
        gxe.ExpectColumnValuesToNotBeNull(column="pin_id"),
        gxe.ExpectColumnValuesToBeUnique(column="pin_id"),
        *contract_rules(schema.PINS),  # counts >= 0, spam score in [0, 1], finite embeddings
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
