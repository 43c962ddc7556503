"""Expectations every suite builds the same way."""

import great_expectations.expectations as gxe
from pyspark.sql import types as T


def column_types(struct: T.StructType) -> list:
    """One type expectation per scalar column of a contract schema (Spark type names)."""
    return [
        gxe.ExpectColumnValuesToBeOfType(column=f.name, type_=type(f.dataType).__name__)
        for f in struct.fields
        if not isinstance(f.dataType, T.ArrayType)
    ]
