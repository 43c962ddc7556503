"""Pin snapshot: unique ids, counts >= 0, embeddings of the right length and finite."""

import great_expectations.expectations as gxe

from expectations.common import column_types
from homefeed import schema
from homefeed.config import Config

TABLE = schema.PINS


def expectations(cfg: Config) -> list:
    return [
        *column_types(schema.spark_schema(schema.PINS)),
        *[gxe.ExpectColumnToExist(column=c) for c in schema.columns(schema.PINS)],
        gxe.ExpectColumnValuesToNotBeNull(column="pin_id"),
        gxe.ExpectColumnValuesToBeUnique(column="pin_id"),
        *[gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in schema.PIN_COUNT_COLUMNS],
        gxe.ExpectColumnValuesToBeBetween(column="spam_score", min_value=0.0, max_value=1.0),
        gxe.UnexpectedRowsExpectation(
            description=f"embedding has {schema.EMBEDDING_DIM} finite values",
            unexpected_rows_query=(
                f"SELECT * FROM {{batch}} WHERE embedding IS NULL OR size(embedding) != {schema.EMBEDDING_DIM} "
                "OR exists(embedding, x -> x IS NULL OR isnan(x) OR abs(x) = double('infinity'))"
            ),
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
