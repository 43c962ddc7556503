"""Runs the Great Expectations suites in ``expectations/`` on Spark DataFrames.

Each validation uses an ephemeral GX context (Spark data source → DataFrame asset → whole-frame
batch definition → validation definition → checkpoint) and builds Data Docs (HTML) into the
run's directory. Raw suites validate the full tables: at this platform's local scale a full pass
costs seconds, and sampling would miss the rare bad rows (a single duplicate key) that matter.

A failed suite raises :class:`ValidationFailed`, whose message names the suite and, for each
failed expectation, its column and observed versus expected values.
"""

from __future__ import annotations

import html
import importlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from homefeed import progress, schema, storage
from homefeed.config import Config
from homefeed.errors import PermanentError


def _quiet_gx() -> None:
    """GX without its analytics and INFO chatter; before GX is first imported, which logs too."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    progress.quiet_libraries()


class ValidationFailed(PermanentError, RuntimeError):
    """Data broke a suite; the message says which expectations and how."""

    def __init__(self, reports: list["SuiteReport"]):
        self.reports = reports
        super().__init__("\n".join(r.describe() for r in reports if not r.success))


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    observed: Any
    expected: dict[str, Any]
    description: str | None = None
    own: bool = False  # homefeed's check beside GX's suite: not in Data Docs

    def describe(self) -> str:
        where = f" on column {self.column!r}" if self.column else ""
        what = f" ({self.description})" if self.description else ""
        return f"  - {self.expectation}{where}{what}: observed {self.observed!r}, expected {self.expected}"


@dataclass
class SuiteReport:
    suite: str
    success: bool
    rows: int
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    data_docs: str | None = None

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def _counted(self) -> str:
        own = [o.expectation for o in self.outcomes if o.own]
        if not own:
            return f"{len(self.outcomes)} expectations"
        return f"{len(self.outcomes)} expectations: {len(self.outcomes) - len(own)} in Data Docs + homefeed's {', '.join(own)}"

    def describe(self) -> str:
        if self.success:
            return f"suite {self.suite!r}: passed ({self._counted()}, {self.rows} rows)"
        lines = [f"suite {self.suite!r} failed {len(self.failures)} of {self._counted()} ({self.rows} rows):"]
        return "\n".join(lines + [o.describe() for o in self.failures])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _suite_module(name: str):
    from expectations import SUITES

    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; suites are {list(SUITES)}")
    return importlib.import_module(f"expectations.{name}")


_EXPECTED_KEYS = ("min_value", "max_value", "value_set", "column_list", "unexpected_rows_query")


def _outcome(result) -> ExpectationOutcome:
    config = result.expectation_config
    kwargs = config.kwargs
    observed = result.result.get("observed_value")
    if result.result.get("unexpected_count") is not None:
        observed = {
            "unexpected_count": result.result.get("unexpected_count"),
            "examples": result.result.get("partial_unexpected_list", [])[:3],
        }
    return ExpectationOutcome(
        expectation=config.type,
        column=kwargs.get("column"),
        success=bool(result.success),
        observed=observed,
        expected={k: kwargs[k] for k in _EXPECTED_KEYS if kwargs.get(k) is not None},
        description=config.description,
    )


def _context(docs_dir: str | Path | None):
    """A GX context: in memory without Data Docs; with them, one file-backed context per docs
    folder (``<docs_dir>/../gx``), so the site's index lists every suite the run validated (a
    fresh context per suite rebuilt the site with the last suite only)."""
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if docs_dir is None:
        context = gx.get_context(mode="ephemeral")
    else:
        context = gx.get_context(mode="file", project_root_dir=str(Path(docs_dir).resolve().parent))
        if "homefeed" not in context.get_site_names():
            context.add_data_docs_site(
                site_name="homefeed",
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(docs_dir).resolve())},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # tqdm bars in a task log are noise
    return context


OFFLINE_CSS = Path(__file__).parent / "defaults" / "data_docs_offline.css"
# What a GX page fetches from beyond the machine: CDN scripts and stylesheets, and GX's logo, whose
# URL carries the data context's id to GX's bucket. Links a reader clicks (<a href>) stay.
REMOTE_TAGS = re.compile(r'<script\b[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>'
                         r'|<link\b[^>]*\bhref="https?://[^"]*"[^>]*>'
                         r'|<img\b[^>]*\bsrc="https?://[^"]*"[^>]*>', re.IGNORECASE)


def make_offline(docs_dir: Path) -> None:
    """Data Docs that read offline and ask nothing of the network: every page without its remote
    tags and with a local stylesheet (GX's styles come from CDNs), and an index homefeed writes
    (GX's builds its list with JavaScript from a CDN, so offline it listed nothing). Idempotent."""
    target = docs_dir / "static" / "styles" / OFFLINE_CSS.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(OFFLINE_CSS, target)
    for page in docs_dir.rglob("*.html"):
        text = page.read_text()
        offline = REMOTE_TAGS.sub("", text)
        if OFFLINE_CSS.name not in offline and "</head>" in offline:
            href = os.path.relpath(target, page.parent)
            offline = offline.replace("</head>", f'<link rel="stylesheet" href="{href}"></head>', 1)
        if offline != text:
            storage.write_text(page, offline)
    storage.write_text(docs_dir / "index.html", _offline_index(docs_dir))


def _offline_index(docs_dir: Path) -> str:
    """Every validation (newest first, with its result) and every suite of the run, as plain links."""
    results = docs_dir.parent / "gx" / "uncommitted" / "validations"
    rows = []
    for result in results.rglob("*.json") if results.is_dir() else []:
        payload = json.loads(result.read_text())
        page = Path("validations") / result.relative_to(results).with_suffix(".html")
        if (docs_dir / page).exists():
            stats = payload.get("statistics", {})
            rows.append((str(payload.get("meta", {}).get("run_id", {}).get("run_time", "")), payload.get("suite_name", ""),
                         bool(payload.get("success")), stats, page.as_posix()))
    cells = "".join(
        f'<tr><td><a href="{html.escape(page)}">{html.escape(suite)}</a></td>'
        f'<td class="{"text-success" if ok else "text-danger"}">{"passed" if ok else "FAILED"}</td>'
        f'<td>{stats.get("successful_expectations", "?")} of {stats.get("evaluated_expectations", "?")}</td>'
        f"<td>{html.escape(run_time[:19].replace('T', ' '))} UTC</td></tr>"
        for run_time, suite, ok, stats, page in sorted(rows, reverse=True))
    suites = "".join(f'<li><a href="expectations/{html.escape(p.name)}">{html.escape(p.stem)}</a></li>'
                     for p in sorted((docs_dir / "expectations").glob("*.html")))
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>Data Docs</title>'
            f'<link rel="stylesheet" href="static/styles/{OFFLINE_CSS.name}"></head><body>'
            "<h1>Data Docs</h1><p>Every validation and expectation suite of this run (Great Expectations' pages; "
            "this index is homefeed's, readable offline).</p>"
            "<h2>Validations</h2><table><tr><th>suite</th><th>result</th><th>expectations met</th><th>validated</th></tr>"
            f"{cells}</table><h2>Expectation suites</h2><ul>{suites}</ul></body></html>")


def run_suite(name: str, frame: DataFrame, expectation_list: list, docs_dir: str | Path | None) -> SuiteReport:
    """Validate one DataFrame against a list of expectations; build Data Docs when asked."""
    import great_expectations as gx

    context = _context(docs_dir)
    # add_or_update throughout: a retried task validates the same suite names in the same context.
    batch_definition = (
        context.data_sources.add_or_update_spark(f"{name}_source").add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=list(expectation_list)))
    definition = context.validation_definitions.add_or_update(gx.ValidationDefinition(name=name, data=batch_definition, suite=suite))
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["homefeed"])] if docs_dir is not None else []
    checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(name=f"{name}_checkpoint", validation_definitions=[definition], actions=actions))
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    if docs_dir is not None:
        make_offline(Path(docs_dir))
    outcomes = [_outcome(r) for run in result.run_results.values() for r in run.results]
    docs = str(Path(docs_dir).resolve() / "index.html") if docs_dir is not None else None
    rows = next((o.observed for o in outcomes if o.expectation == "expect_table_row_count_to_be_between"), None)
    return SuiteReport(name, bool(result.success), int(rows) if isinstance(rows, int) else -1, outcomes, docs)


def read_dataset(spark: SparkSession, suite: str, data_root: str, table: str | None = None) -> DataFrame:
    """The frame a suite validates: a raw table under the raw root, or one table (``rows`` by
    default, or ``sequences``) of a published instance set."""
    module = _suite_module(suite)
    table = table or module.TABLE or getattr(module, "ROWS", None)
    path = f"{data_root.rstrip('/')}/{table}" if table else data_root
    try:
        return spark.read.option("pathGlobFilter", "*.parquet").option("basePath", path).parquet(path)
    except Exception as exc:
        raise ValidationFailed(
            [SuiteReport(suite, False, 0, [ExpectationOutcome("readable_parquet", None, False, str(exc).splitlines()[0], {"path": path})])]
        ) from exc


def sequence_keys_resolve(rows: DataFrame, sequences: DataFrame) -> ExpectationOutcome:
    """Every row's ``sequence_key`` names a sequence of the same user and request time."""
    targets = sequences.select(
        F.col(schema.SEQUENCE_KEY), F.col("user_id").alias("_seq_user"), F.col("ts").alias("_seq_ts")
    )
    joined = rows.select(schema.SEQUENCE_KEY, "user_id", "ts").join(targets, schema.SEQUENCE_KEY, "left")
    bad = joined.filter(
        F.col("_seq_user").isNull() | (F.col("_seq_user") != F.col("user_id")) | (F.col("_seq_ts") != F.col("ts"))
    )
    unresolved = bad.count()
    examples = [r[schema.SEQUENCE_KEY] for r in bad.limit(3).collect()] if unresolved else []
    return ExpectationOutcome(
        "sequence_keys_resolve", schema.SEQUENCE_KEY, unresolved == 0, {"unexpected_count": unresolved, "examples": examples},
        {"every_row": f"has a row in {schema.SEQUENCES_DIR}/ with its user_id and ts"}, own=True,
    )


def empty_partitions(table_root: Path) -> list[str]:
    """``dt=`` partitions whose Parquet files hold no rows (a producer that wrote nothing)."""
    import pyarrow.parquet as pq

    empty = []
    for partition in sorted(table_root.glob(f"{schema.DT}=*")):
        files = storage.list_files(partition)
        if sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 0:
            empty.append(partition.name)
    return empty


def validate(spark: SparkSession, suite: str, data_root: str, cfg: Config, docs_dir: str | Path | None = None) -> list[SuiteReport]:
    """Run one suite on a dataset root; raises :class:`ValidationFailed` on any failure."""
    _quiet_gx()
    module = _suite_module(suite)
    if module.TABLE:
        _check_files(suite, data_root, module.TABLE)
    frame = read_dataset(spark, suite, data_root)
    try:
        reports = [run_suite(suite, frame, module.expectations(cfg), docs_dir)]
        if module.TABLE:
            empty = empty_partitions(storage.local_path(data_root) / module.TABLE)
            reports[0].outcomes.append(ExpectationOutcome("partitions_not_empty", schema.DT, not empty, empty, {"rows_per_partition": ">= 1"}, own=True))
            reports[0].success = reports[0].success and not empty
        if getattr(module, "SEQUENCES", None):
            sequences = read_dataset(spark, suite, data_root, module.SEQUENCES)
            resolved = sequence_keys_resolve(frame, sequences)
            reports[0].outcomes.append(resolved)
            reports[0].success = reports[0].success and resolved.success
            reports.append(run_suite(f"{suite}_sequences", sequences, module.sequence_expectations(cfg), docs_dir))
        if module.TABLE is None and schema.SPLIT in frame.columns:
            unsampled = frame.filter(F.col(schema.SPLIT) != "train")
            reports.append(run_suite(f"{suite}_label_rates", unsampled, module.label_rate_expectations(cfg), docs_dir))
    except ValidationFailed:
        raise
    except Exception as exc:  # unreadable files surface when GX first scans the frame
        raise ValidationFailed(
            [SuiteReport(suite, False, 0, [ExpectationOutcome("readable_data", None, False, str(exc).splitlines()[0], {"path": data_root})])]
        ) from exc
    for report in reports:  # one line per suite, in the task log and the terminal
        progress.report("%s", report.describe().splitlines()[0])
    if not all(r.success for r in reports):
        raise ValidationFailed(reports)
    return reports


def _check_files(suite: str, data_root: str, table: str) -> None:
    """Every file of a raw table readable and of the contract's types, before GX sees any (the
    instance job's own check): one line naming table, file and column, not "observed None"."""
    from jobs.build_instances import InputDataError, check_files

    try:
        check_files(data_root, table)
    except InputDataError as exc:
        raise ValidationFailed([SuiteReport(suite, False, 0, [ExpectationOutcome("readable_parquet", None, False, str(exc), {"every_file": "readable, of the contract's types"})])]) from None


def validate_raw(spark: SparkSession, raw_root: str, cfg: Config, docs_dir: str | Path | None = None) -> list[SuiteReport]:
    storage.require_published(raw_root, "raw data")
    reports, failed = [], []
    for suite in ("raw_impressions", "raw_actions", "pins", "users"):
        try:
            reports += validate(spark, suite, raw_root, cfg, docs_dir)
        except ValidationFailed as exc:
            failed += exc.reports
    if failed:
        raise ValidationFailed(failed)
    return reports
