"""The bad-input catalogue: each corruption goes through `homefeed validate` and fails, by name."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from homefeed import schema, validation
from homefeed.cli import app
from homefeed.storage import list_files

runner = CliRunner()


def validate(suite: str, data: Path):
    return runner.invoke(app, ["validate", "--suite", suite, "--data", str(data)])


def rewrite(files: list[Path], change) -> None:
    """Apply ``change(table) -> table`` to each Parquet file in place."""
    for path in files:
        table = change(pq.read_table(path, partitioning=None))
        pq.write_table(table, path)
        path.with_name(f".{path.name}.crc").unlink(missing_ok=True)  # Spark's checksum of the old bytes


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


@pytest.fixture()
def raw_copy(raw_dir, tmp_path) -> Path:
    return Path(shutil.copytree(raw_dir, tmp_path / "raw"))


@pytest.fixture()
def instances_copy(instances_dir, tmp_path) -> Path:
    return Path(shutil.copytree(instances_dir, tmp_path / "instances"))


def first_file(root: Path, table: str) -> Path:
    return list_files(root / table)[0]


@pytest.mark.parametrize("suite", ["raw_impressions", "raw_actions", "pins", "users"])
def test_good_raw_data_passes(raw_dir, suite, spark):
    result = validate(suite, raw_dir)
    assert result.exit_code == 0, result.output
    assert "passed" in result.output


def test_good_instances_pass(instances_dir, spark):
    result = validate("instances", instances_dir)
    assert result.exit_code == 0, result.output


RAW_CORRUPTIONS = {
    "missing-column": ("raw_impressions", lambda t: t.drop_columns(["source"]), r"expect_column_to_exist on column 'source'"),
    "wrong-type": ("raw_impressions", lambda t: set_column(t, "position", pc.cast(t["position"], pa.string())),
                   # the file, the column and both types in one line (before: "12 of 26 failed, observed None")
                   r"impressions: \S+/part-0\.parquet: column 'position' has type string, expected int32"),
    "null-user-id": ("raw_impressions", lambda t: set_column(t, "user_id", pa.nulls(t.num_rows, pa.int64())),
                     r"expect_column_values_to_not_be_null on column 'user_id'"),
    "duplicate-impressions": ("raw_impressions", lambda t: pa.concat_tables([t, t.slice(0, 3)]), r"expect_compound_columns_to_be_unique"),
    "unknown-action": ("raw_actions", lambda t: set_column(t, "action", pa.array(["share"] * t.num_rows)),
                       r"expect_column_values_to_be_in_set on column 'action'"),
    "outside-partition": ("raw_actions", lambda t: set_column(t, "ts", pc.add(t["ts"], 3 * 86_400_000)), r"inside its dt partition"),
    "future": ("raw_impressions", lambda t: set_column(t, "ts", pc.add(t["ts"], 20 * 365 * 86_400_000)), r"no timestamps in the future"),
    "nan-embedding": ("pins", lambda t: set_column(t, "embedding", pa.array([[float("nan")] * schema.EMBEDDING_DIM] * t.num_rows, pa.list_(pa.float32()))),
                      r"finite values"),
}


@pytest.mark.parametrize("case", sorted(RAW_CORRUPTIONS))
def test_raw_corruption_fails_naming_the_problem(raw_copy, case, spark):
    suite, change, message = RAW_CORRUPTIONS[case]
    table = {"raw_impressions": "impressions", "raw_actions": "actions", "pins": "pins", "users": "users"}[suite]
    rewrite([first_file(raw_copy, table)], change)
    result = validate(suite, raw_copy)
    assert result.exit_code == 1, result.output
    assert f"suite '{suite}' failed" in result.output
    assert re.search(message, result.output), result.output


def test_empty_partition_fails(raw_copy, spark):
    path = first_file(raw_copy, "impressions")
    rewrite([path], lambda t: t.slice(0, 0))
    result = validate("raw_impressions", raw_copy)
    assert result.exit_code == 1
    assert "partitions_not_empty" in result.output and path.parent.name in result.output


def test_corrupt_parquet_fails_as_unreadable_naming_the_file(raw_copy, spark):
    path = first_file(raw_copy, "actions")
    path.write_bytes(b"PAR1 this is not parquet")
    result = validate("raw_actions", raw_copy)
    assert result.exit_code == 1
    assert f"actions: {path} is not a readable Parquet file" in result.output


def test_label_rate_collapse_fails(instances_copy, spark):
    rows = instances_copy / schema.ROWS_DIR
    files = list_files(rows / "split=validation") + list_files(rows / "split=test")
    rewrite(files, lambda t: set_column(t, "label_repin", pa.array(np.zeros(t.num_rows, np.int32))))
    result = validate("instances", instances_copy)
    assert result.exit_code == 1
    assert "instances_label_rates" in result.output and "label_repin" in result.output


def test_leaking_sequence_fails(instances_copy, spark):
    def leak(table: pa.Table) -> pa.Table:
        seq_ts = [[ts] for ts in table["ts"].to_pylist()]  # an action at the request time itself
        table = set_column(table, schema.SEQ_TS, pa.array(seq_ts, pa.list_(pa.int64())))
        table = set_column(table, schema.SEQ_PIN_ID, pa.array([[1]] * table.num_rows, pa.list_(pa.int64())))
        return set_column(table, schema.SEQ_ACTION, pa.array([[1]] * table.num_rows, pa.list_(pa.int32())))

    rewrite(list_files(instances_copy / schema.SEQUENCES_DIR / "split=test")[:1], leak)
    result = validate("instances", instances_copy)
    assert result.exit_code == 1
    assert "suite 'instances_sequences' failed" in result.output and "leakage" in result.output


def test_a_row_whose_sequence_key_resolves_to_nothing_fails(instances_copy, spark):
    rewrite(list_files(instances_copy / schema.ROWS_DIR / "split=test")[:1],
            lambda t: set_column(t, schema.SEQUENCE_KEY, pc.add(t[schema.SEQUENCE_KEY], 1)))
    result = validate("instances", instances_copy)
    assert result.exit_code == 1
    assert "sequence_keys_resolve" in result.output


def test_usage_errors_exit_2(raw_dir, tmp_path):
    assert validate("no_such_suite", raw_dir).exit_code == 2
    assert validate("pins", tmp_path / "missing").exit_code == 2


def test_data_docs_keep_every_suite_of_a_run_and_read_offline(raw_dir, spark, base_config, tmp_path, browser_page):
    """Issue 22: one GX context per run, so the index lists every suite (before: the last one);
    every page links a local stylesheet (GX's own come from CDNs), once, however often it is built.
    Issue 33: offline, GX's index listed nothing (its list is built by JavaScript from a CDN) and
    every page made 16 requests beyond file:// (one carrying the data context's id)."""
    docs = tmp_path / "run" / "data_docs"
    for suite in ("pins", "users", "pins"):  # a retried task validates a suite again
        validation.validate(spark, suite, str(raw_dir), base_config, docs)
    index = (docs / "index.html").read_text()
    assert "expectations/pins.html" in index and "expectations/users.html" in index
    pages = list(docs.rglob("*.html"))
    assert len(pages) >= 3 and all(p.read_text().count(validation.OFFLINE_CSS.name) == 1 for p in pages)
    assert (docs / "static" / "styles" / validation.OFFLINE_CSS.name).exists()

    text, outside = browser_page((docs / "index.html").as_uri(), "Validations", tmp_path / "index.png")
    assert outside == []
    validations = [line for line in text.splitlines() if line.startswith(("pins\t", "users\t"))]
    assert len(validations) == 3 and all("passed" in line for line in validations)  # pins twice, users once
    assert "pins" in text.split("Expectation suites")[1] and "users" in text.split("Expectation suites")[1]
    for page in [docs / "expectations" / "pins.html", next((docs / "validations" / "users").rglob("*.html"))]:
        text, outside = browser_page(page.as_uri(), "Great Expectations Version", tmp_path / f"{page.stem}.png")
        assert outside == [] and ">= 0" in text, page


def test_a_suites_count_names_homefeeds_own_checks_beside_gxs():
    """Before: "26 expectations" where Data Docs showed 25, with nothing saying why (issue 33, item 7)."""
    gx_outcome = validation.ExpectationOutcome("expect_column_values_to_not_be_null", "pin_id", True, 0, {})
    own = validation.ExpectationOutcome("partitions_not_empty", "dt", True, [], {}, own=True)
    passed = validation.SuiteReport("pins", True, 10, [gx_outcome, gx_outcome, own])
    assert "3 expectations: 2 in Data Docs + homefeed's partitions_not_empty" in passed.describe()
    assert "(2 expectations, 10 rows)" in validation.SuiteReport("pins", True, 10, [gx_outcome, gx_outcome]).describe()


# --------------------------------------------------------------------------- learned pin embeddings
def pin_embeddings(root: Path, vectors: np.ndarray, sources: list[str]) -> Path:
    """A published embedding table of ``vectors`` (the default width: the suite reads the default config)."""
    from homefeed import embeddings, storage

    with storage.publish_dataset(root) as staging:
        embeddings.write(staging, list(range(1, len(vectors) + 1)), list(vectors), sources,
                         {"method": "word2vec", "window": {"end": "2026-01-07"}, "projection": np.zeros((17, 16)).tolist()})
    return root


EMBEDDING_CORRUPTIONS = {
    "not-finite": (lambda v: v.__setitem__((0, 3), np.nan), ["learned"] * 20, r"embedding has 16 finite values"),
    "zero-vector": (lambda v: v.__setitem__(1, 0.0), ["learned"] * 20, r"embedding norm in \(0, 100.0\]"),
    "huge-norm": (lambda v: v.__setitem__(2, 1e3), ["learned"] * 20, r"embedding norm in \(0, 100.0\]"),
    "too-few-learned": (lambda v: None, ["content"] * 20, r"at least 5% of pins learned"),
    "unknown-source": (lambda v: None, ["learned"] * 19 + ["pinsage"], r"expect_column_values_to_be_in_set on column 'source'"),
}


def test_good_pin_embeddings_pass(tmp_path, spark):
    vectors = np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32)
    result = validate("pin_embeddings", pin_embeddings(tmp_path / "emb", vectors, ["learned"] * 10 + ["content"] * 10))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("case", sorted(EMBEDDING_CORRUPTIONS))
def test_bad_pin_embeddings_fail_naming_the_problem(tmp_path, case, spark):
    corrupt, sources, message = EMBEDDING_CORRUPTIONS[case]
    vectors = np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32)
    corrupt(vectors)
    result = validate("pin_embeddings", pin_embeddings(tmp_path / "emb", vectors, sources))
    assert result.exit_code == 1, result.output
    assert "suite 'pin_embeddings' failed" in result.output and re.search(message, result.output), result.output
