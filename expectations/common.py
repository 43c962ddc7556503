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


def event_time_checks() -> list:
    """Logs partitioned by event day: each ``ts`` inside its ``dt`` (UTC) and none in the future."""
    return [
        gxe.UnexpectedRowsExpectation(
            description="ts falls inside its dt partition (UTC day)",
            unexpected_rows_query="SELECT * FROM {batch} WHERE date_format(timestamp_millis(ts), 'yyyy-MM-dd') != dt",
        ),
        gxe.UnexpectedRowsExpectation(
            description="no timestamps in the future",
            unexpected_rows_query="SELECT * FROM {batch} WHERE ts > unix_millis(current_timestamp())",
        ),
    ]
