"""The raw contract's row rules, defined once.

The instance job refuses raw data that breaks one (``jobs/build_instances.py``: one line naming
the table, the rule, the count and an example), and the Great Expectations suites report the same
rules (``expectations/*``), so running ``build-instances`` alone is as strict as the pipeline.

A rule is a Spark SQL condition that is true for a row that breaks it. ``{now_ms}`` stands for
the clock: the job passes its own ``now_ms`` (reproducible), the suites the current time.
"""

from __future__ import annotations

from dataclasses import dataclass

from homefeed import schema

NOW_SQL = "unix_millis(current_timestamp())"


@dataclass(frozen=True)
class RowRule:
    table: str
    holds: str  # what holds for every row, as a suite describes it
    violation: str  # Spark SQL, true for a row that breaks the rule

    def condition(self, now_ms: int | None = None) -> str:
        return self.violation.replace("{now_ms}", NOW_SQL if now_ms is None else str(int(now_ms)))


def _event_time_rules(table: str) -> tuple[RowRule, ...]:
    # Logs are partitioned by event day: a row outside its day would be dropped or double counted
    # by a window over dt, and one from the future would leak labels into training.
    return (
        RowRule(table, "ts falls inside its dt partition (UTC day)", "date_format(timestamp_millis(ts), 'yyyy-MM-dd') != dt"),
        RowRule(table, "no timestamps in the future", "ts > {now_ms}"),
    )


ROW_RULES: tuple[RowRule, ...] = (
    *_event_time_rules(schema.IMPRESSIONS),
    *_event_time_rules(schema.ACTIONS),
    RowRule(schema.PINS, f"embedding has {schema.EMBEDDING_DIM} finite values",
            f"embedding IS NULL OR size(embedding) != {schema.EMBEDDING_DIM} "
            "OR exists(embedding, x -> x IS NULL OR isnan(x) OR abs(x) = double('infinity'))"),
    # Counts are log1p-transformed; a negative one used to be clamped to 0 without a word.
    *[RowRule(schema.PINS, f"{c} >= 0", f"{c} < 0") for c in schema.PIN_COUNT_COLUMNS],
    RowRule(schema.PINS, "spam_score within [0, 1]", "spam_score < 0 OR spam_score > 1"),
    *[RowRule(schema.USERS, f"{c} >= 0", f"{c} < 0") for c in schema.USER_COUNT_COLUMNS],
)


def rules(table: str) -> tuple[RowRule, ...]:
    return tuple(r for r in ROW_RULES if r.table == table)
