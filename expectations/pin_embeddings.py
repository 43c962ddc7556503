"""Learned pin embeddings (``homefeed embed-pins``): one finite vector per pin of the configured
width, no zero vector, norms within bounds, and enough pins actually learned.

A zero vector or a huge norm is what a diverged or empty MLlib fit leaves; a low share of learned
pins means the window held too little engagement for the vectors to say much (the rest are
projected content vectors), which ``embeddings.min_coverage`` bounds.
"""

import great_expectations.expectations as gxe

from homefeed.config import Config
from homefeed.embeddings import CONTENT, LEARNED

TABLE = None


def _norm() -> str:
    return "sqrt(aggregate(embedding, 0D, (total, x) -> total + x * x))"


def expectations(cfg: Config) -> list:
    ecfg = cfg.embeddings
    return [
        *[gxe.ExpectColumnToExist(column=c) for c in ("pin_id", "embedding", "source")],
        gxe.ExpectColumnValuesToNotBeNull(column="pin_id"),
        gxe.ExpectColumnValuesToBeUnique(column="pin_id"),
        gxe.ExpectColumnValuesToBeInSet(column="source", value_set=[LEARNED, CONTENT]),
        gxe.UnexpectedRowsExpectation(
            description=f"embedding has {ecfg.dim} finite values",
            unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE embedding IS NULL OR size(embedding) != {ecfg.dim} "
                                  "OR exists(embedding, x -> x IS NULL OR isnan(x) OR abs(x) = double('infinity'))"),
        gxe.UnexpectedRowsExpectation(
            description=f"embedding norm in (0, {ecfg.max_norm}]",
            unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE NOT ({_norm()} > 0 AND {_norm()} <= {ecfg.max_norm})"),
        gxe.UnexpectedRowsExpectation(
            description=f"at least {ecfg.min_coverage:.0%} of pins learned",
            unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE (SELECT avg(CASE WHEN source = '{LEARNED}' THEN 1.0 ELSE 0.0 END) "
                                  f"FROM {{batch}}) < {ecfg.min_coverage} LIMIT 1"),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
