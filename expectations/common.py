"""Expectations every suite builds the same way."""

import great_expectations.expectations as gxe
from pyspark.sql import types as T

from homefeed import contract


def column_types(struct: T.StructType) -> list:
    """One type expectation per scalar column of a contract schema (Spark type names)."""
    return [
        gxe.ExpectColumnValuesToBeOfType(column=f.name, type_=type(f.dataType).__name__)
        for f in struct.fields
        if not isinstance(f.dataType, T.ArrayType)
    ]


def contract_rules(table: str) -> list:
    """The raw contract's row rules for ``table`` (``homefeed.contract``: the instance job enforces
    the same definitions), one unexpected-rows expectation each."""
    return [
        gxe.UnexpectedRowsExpectation(description=rule.holds, unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE {rule.condition()}")
        for rule in contract.rules(table)
    ]
