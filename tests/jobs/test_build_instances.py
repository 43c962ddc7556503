"""The instance job on hand-built rows: labels, sequences, sampling, features, bad input."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from homefeed import schema
from homefeed.simulate import SimulatedLog, write_raw
from jobs import build_instances as job

DAY = 86_400_000
T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
DELAY = 30_000
CODE = schema.ACTION_CODES


def impressions_frame(spark, rows):
    return spark.createDataFrame(rows, schema.spark_schema(schema.IMPRESSIONS))


def actions_frame(spark, rows):
    return spark.createDataFrame(rows, schema.spark_schema(schema.ACTIONS))


def pins_frame(spark, pin_ids):
    rows = [(p, [0.0] * schema.EMBEDDING_DIM, T0 - DAY, p % 5, 100 + p % 3, 1, 2, 10, 0.1) for p in pin_ids]
    return spark.createDataFrame(rows, schema.spark_schema(schema.PINS))


# --------------------------------------------------------------------------- labels
def test_labels_count_actions_inside_the_attribution_window_only(spark):
    window = 60_000
    imps = impressions_frame(spark, [("r1", 1, 10, T0, "pfy", 0), ("r1", 1, 11, T0, "pfy", 1), ("r1", 1, 12, T0, "pfy", 2)])
    acts = actions_frame(spark, [
        (1, 10, T0 + 5_000, "repin"),       # inside
        (1, 11, T0 + window + 1, "click"),  # one ms too late
        (1, 12, T0 - 1, "hide"),            # before the impression
        (1, 12, T0 + window, "click"),      # exactly at the window's end: inside
    ])
    labelled = job.add_labels(imps, acts, window).select("pin_id", *schema.LABEL_COLUMNS)
    expected = spark.createDataFrame(
        [(10, 1, 0, 0, 0), (11, 0, 0, 0, 0), (12, 0, 1, 0, 0)],
        "pin_id long, " + ", ".join(f"{c} int" for c in schema.LABEL_COLUMNS),
    )
    assertDataFrameEqual(labelled, expected, checkRowOrder=False)


# --------------------------------------------------------------------------- sequences
def sequences(spark, imps, acts, pins, seq_len=100):
    actions = actions_frame(spark, acts)
    ranked = job.rank_events(impressions_frame(spark, imps), actions, pins_frame(spark, pins), DELAY)
    return job.attach_sequences(ranked, actions, seq_len)


def test_sequence_holds_actions_strictly_before_ts_minus_delay_newest_first(spark):
    ts = T0 + DAY
    acts = [
        (1, 5, ts - DELAY - 2_000, "click"),
        (1, 6, ts - DELAY - 1_000, "repin"),
        (1, 7, ts - DELAY - 1, "hide"),     # one ms before the cut-off: in
        (1, 8, ts - DELAY, "click"),        # at the cut-off: out (strictly before)
        (1, 9, ts - DELAY + 1, "closeup"),  # after the cut-off: out
    ]
    out = sequences(spark, [("r", 1, 20, ts, "pfy", 0)], acts, [5, 6, 7, 8, 9, 20])
    expected = spark.createDataFrame(
        [("r", 20, [7, 6, 5], [CODE["hide"], CODE["repin"], CODE["click"]], [ts - DELAY - 1, ts - DELAY - 1_000, ts - DELAY - 2_000], 3)],
        f"request_id string, pin_id long, {schema.SEQ_PIN_ID} array<long>, {schema.SEQ_ACTION} array<int>, "
        f"{schema.SEQ_TS} array<long>, user_prior_actions long",
    )
    assertDataFrameEqual(out.select(*expected.columns), expected)


def test_sequence_is_truncated_to_the_latest_seq_len_actions(spark):
    ts = T0 + 2 * DAY
    acts = [(2, 1000 + i, T0 + i * 1000, "click") for i in range(250)]
    out = sequences(spark, [("r", 2, 20, ts, "follow", 0)], acts, [20, *range(1000, 1250)]).first()
    assert len(out[schema.SEQ_PIN_ID]) == 100
    assert out[schema.SEQ_PIN_ID] == [1000 + i for i in range(249, 149, -1)]
    assert out["user_prior_actions"] == 250


def test_sequences_of_each_impression_follow_its_own_time(spark):
    acts = [(3, 100 + i, T0 + i * 60_000, "click") for i in range(5)]
    imps = [("a", 3, 20, T0 + 2 * 60_000 + DELAY + 1, "pfy", 0), ("b", 3, 21, T0 + 10 * 60_000, "pfy", 0)]
    rows = {r["request_id"]: r for r in sequences(spark, imps, acts, [20, 21, *range(100, 105)], seq_len=3).collect()}
    assert rows["a"][schema.SEQ_PIN_ID] == [102, 101, 100]
    assert rows["b"][schema.SEQ_PIN_ID] == [104, 103, 102]  # latest 3 of 5, across two blocks


def test_sequences_match_a_brute_force_scan_at_every_block_boundary(spark):
    """seq_len 4 over 37 actions puts cut-offs on every position of every block; each sequence
    must equal the latest 4 actions before ts - delay found by scanning the whole history."""
    rng = np.random.default_rng(5)
    names = list(CODE)
    times = np.sort(rng.choice(np.arange(1, 5_000), size=37, replace=False)) * 1_000 + T0
    acts = [(7, 500 + i, int(t), names[i % len(names)]) for i, t in enumerate(times)]
    cutoffs = [int(t) + DELAY + d for t in times[::2] for d in (0, 1)] + [T0, T0 + 10 * DAY]
    imps = [(f"r{i}", 7, 20, ts, "pfy", 0) for i, ts in enumerate(cutoffs)]
    rows = {r["request_id"]: r for r in sequences(spark, imps, acts, [20, *range(500, 537)], seq_len=4).collect()}
    for request_id, _, _, ts, _, _ in imps:
        before = [a for a in acts if a[2] < ts - DELAY][::-1][:4]
        assert rows[request_id][schema.SEQ_PIN_ID] == [a[1] for a in before], request_id
        assert rows[request_id][schema.SEQ_ACTION] == [CODE[a[3]] for a in before], request_id
        assert rows[request_id]["user_prior_actions"] == sum(a[2] < ts - DELAY for a in acts)


def test_user_without_history_gets_an_empty_sequence(spark):
    out = sequences(spark, [("r", 4, 20, T0, "pfy", 0)], [(5, 20, T0 - 10 * DELAY, "repin")], [20]).first()
    assert out[schema.SEQ_PIN_ID] == [] and out[schema.SEQ_TS] == [] and out["user_prior_actions"] == 0


def test_engagement_counts_only_positive_actions_before_the_cutoff(spark):
    ts = T0 + DAY
    acts = [
        (1, 30, ts - 10 * DELAY, "repin"),  # pin 30: category 0, owner 100
        (1, 35, ts - 9 * DELAY, "click"),   # pin 35: category 0, owner 102
        (1, 35, ts - 8 * DELAY, "hide"),    # negative: not an engagement
        (1, 40, ts, "click"),               # after the cut-off
    ]
    out = sequences(spark, [("r", 1, 40, ts, "pfy", 0)], acts, [30, 35, 40]).first()  # pin 40: category 0, owner 101
    assert out["user_category_engagements"] == 2
    assert out["user_owner_engagements"] == 0


# --------------------------------------------------------------------------- sampling and features
def test_sampling_rates_and_weights(spark):
    n = 100_000
    frame = spark.range(n).select(
        F.concat(F.lit("r"), F.col("id").cast("string")).alias("request_id"),
        (F.col("id") % 7).alias("pin_id"),
        F.lit("train").alias(schema.SPLIT),
        *[((F.col("id") % 4 == 0) & F.lit(h == "repin")).cast("int").alias(schema.label_column(h)) for h in schema.HEADS],
    )
    cfg = job.InstancesConfig(positive_rate=0.8, negative_rate=0.1, seed=3)
    sampled = job.sample(frame, cfg).groupBy(schema.label_column("repin"), schema.SAMPLE_WEIGHT).count().collect()
    counts = {(r[0], r[1]): r[2] for r in sampled}
    assert len(counts) == 2  # one weight per class
    positives = next(c for (label, _), c in counts.items() if label == 1)
    negatives = next(c for (label, _), c in counts.items() if label == 0)
    assert positives / (n / 4) == pytest.approx(0.8, abs=0.02)
    assert negatives / (3 * n / 4) == pytest.approx(0.1, abs=0.01)
    weights = {label: w for (label, w) in counts}
    assert weights[1] == pytest.approx(1.25) and weights[0] == pytest.approx(10.0)
    # Deterministic: the same seed keeps the same rows.
    assert job.sample(frame, cfg).count() == job.sample(frame, cfg).count()


def test_sampling_before_the_sequence_join_keeps_every_kept_row_unchanged(spark, raw_dir, base_config):
    """build_instances samples before computing sequences: the rows it keeps must carry what the
    sequence stage gives when it sees every impression, and the dropped rows must be the ones
    ``sample`` drops."""
    icfg = base_config.instances.model_copy(update={"negative_rate": 0.3})
    raw, start, end = job.extract(spark, str(raw_dir), None, None, now_ms=T0 + 400 * DAY)
    built = job.build_instances(raw, start, end, icfg)
    keys = list(job.IMPRESSION_KEY)
    every = job.attach_sequences(job.rank_events(raw.impressions, raw.actions, raw.pins, icfg.delay_ms), raw.actions, icfg.seq_len)
    labelled = job.assign_splits(job.add_labels(raw.impressions, raw.actions, icfg.attribution_window_ms), start, end, icfg)
    expected_keys = job.sample(labelled, icfg).select(*keys)
    columns = [*keys, "user_prior_actions", "user_category_engagements", *schema.SEQUENCE_COLUMNS]
    kept = built.select(*columns)
    assert 0 < kept.count() < raw.impressions.count()  # the sample dropped some rows
    assertDataFrameEqual(kept.select(*keys), expected_keys, checkRowOrder=False)
    counts = {c: F.log1p(F.col(c).cast("double")) for c in ("user_prior_actions", "user_category_engagements")}  # log1p'd in the job
    assertDataFrameEqual(kept, every.join(expected_keys, keys).withColumns(counts).select(*columns), checkRowOrder=False)


def test_validation_and_test_rows_are_never_sampled(spark):
    frame = spark.range(1000).select(
        F.col("id").cast("string").alias("request_id"), F.col("id").alias("pin_id"), F.lit("test").alias(schema.SPLIT),
        *[F.lit(0).alias(c) for c in schema.LABEL_COLUMNS],
    )
    sampled = job.sample(frame, job.InstancesConfig(negative_rate=0.1))
    assert sampled.count() == 1000
    assert sampled.agg(F.max(schema.SAMPLE_WEIGHT)).first()[0] == 1.0


def test_log_transform_applies_log1p_to_counts_only(spark):
    row = {f: 3.0 for f in schema.DENSE_FEATURES}
    out = job.log_transform(spark.createDataFrame([row])).first()
    assert out["pin_repin_count"] == pytest.approx(np.log1p(3.0))
    assert out["pin_spam_score"] == pytest.approx(3.0)
    assert out["feed_position"] == pytest.approx(3.0)


# --------------------------------------------------------------------------- the whole job
def write_hand_raw(path, impressions: pd.DataFrame, actions: pd.DataFrame):
    pin_ids = sorted(set(impressions["pin_id"]) | set(actions["pin_id"]))
    pins = pd.DataFrame({
        "pin_id": np.array(pin_ids, dtype=np.int64), "embedding": [np.zeros(schema.EMBEDDING_DIM, np.float32)] * len(pin_ids),
        "created_ts": np.full(len(pin_ids), T0 - DAY, np.int64), "category": np.ones(len(pin_ids), np.int32),
        "owner_id": np.ones(len(pin_ids), np.int64), **{c: np.full(len(pin_ids), 5, np.int64) for c in schema.PIN_COUNT_COLUMNS},
        "spam_score": np.zeros(len(pin_ids)),
    })
    user_ids = sorted(set(impressions["user_id"]))
    users = pd.DataFrame({
        "user_id": np.array(user_ids, np.int64), "signup_ts": np.full(len(user_ids), T0 - 400 * DAY, np.int64),
        "last_active_ts": np.full(len(user_ids), T0, np.int64), **{c: np.full(len(user_ids), 50, np.int64) for c in schema.USER_COUNT_COLUMNS},
        "gender": "female", "country": "US",
    })
    write_raw(SimulatedLog(impressions, actions, pins, users), path, T0)


def hand_impressions(days=4, per_day=6):
    rows = []
    for d in range(days):
        for i in range(per_day):
            rows.append((f"r{d}-{i // 3}", 1 + i % 2, 10 + i, T0 + d * DAY + 3_600_000 * (1 + i // 3), "pfy", i % 3))
    return pd.DataFrame(rows, columns=["request_id", "user_id", "pin_id", "ts", "source", "position"]).astype({"position": np.int32})


def hand_actions(impressions: pd.DataFrame):
    clicked = impressions.iloc[::2]
    return pd.DataFrame({"user_id": clicked["user_id"].to_numpy(), "pin_id": clicked["pin_id"].to_numpy(),
                         "ts": clicked["ts"].to_numpy() + 5_000, "action": "click"})


@pytest.fixture()
def small_config(base_config):
    return base_config.with_overrides({"instances": {"negative_rate": 1.0}})


def test_job_publishes_a_manifest_with_train_only_stats_and_is_idempotent(spark, tmp_path, small_config):
    imps = hand_impressions()
    write_hand_raw(tmp_path / "raw", imps, hand_actions(imps))
    out = tmp_path / "instances"
    manifest = job.run(spark, str(tmp_path / "raw"), str(out), small_config)
    assert (out / schema.SUCCESS_MARKER).exists()
    assert manifest["input_rows"]["impressions"] == len(imps)
    assert {k: v["rows"] for k, v in manifest["splits"].items()} == {"train": 12, "validation": 6, "test": 6}
    assert manifest["splits"]["test"]["label_rates"]["click"] == pytest.approx(0.5)
    # Standardisation statistics come from the train days only: their positions are 0,1,2,0,1,2 (mean 1).
    assert manifest["feature_stats"]["feed_position"]["mean"] == pytest.approx(1.0)
    train_rows = spark.read.parquet(str(out / schema.ROWS_DIR / "split=train"))
    assert train_rows.agg(F.mean("feed_position")).first()[0] == pytest.approx(0.0, abs=1e-6)
    marker_time = (out / schema.SUCCESS_MARKER).stat().st_mtime_ns
    again = job.run(spark, str(tmp_path / "raw"), str(out), small_config)
    assert again == json.loads((out / schema.MANIFEST).read_text())
    assert (out / schema.SUCCESS_MARKER).stat().st_mtime_ns == marker_time  # nothing rewritten


def test_a_damaged_dataset_is_named_by_readers_and_rebuilt_by_the_next_run(spark, tmp_path, small_config):
    """Before: a deleted file survived a rerun (the skip trusted the fingerprint), a damaged manifest
    was a JSONDecodeError naming no file, and a missing _pin_features/ a 100-line traceback."""
    import shutil

    from homefeed import storage
    from homefeed.data import InstanceDataset, read_pin_features

    imps = hand_impressions()
    write_hand_raw(tmp_path / "raw", imps, hand_actions(imps))
    out = tmp_path / "instances"
    job.run(spark, str(tmp_path / "raw"), str(out), small_config)
    next((out / schema.SEQUENCES_DIR).rglob("*.parquet")).unlink()
    shutil.rmtree(out / schema.PIN_FEATURES_DIR)
    with pytest.raises(storage.StorageError, match=r"have no _pin_features/ table"):
        read_pin_features(out)
    manifest = (out / schema.MANIFEST).read_text()
    (out / schema.MANIFEST).write_text(manifest[: len(manifest) // 2])
    with pytest.raises(storage.StorageError, match=r"_manifest\.json is damaged"):
        InstanceDataset.open(out)
    rebuilt = job.run(spark, str(tmp_path / "raw"), str(out), small_config)
    assert storage.missing_files(out, rebuilt["files"]) == [] and (out / schema.PIN_FEATURES_DIR).is_dir()
    (out / schema.MANIFEST).write_text(json.dumps({**rebuilt, "files": {**rebuilt["files"], "rows/gone.parquet": 10}}))
    assert "gone.parquet" not in job.run(spark, str(tmp_path / "raw"), str(out), small_config)["files"]  # a listed file missing: rebuilt


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda imps, acts: (imps.drop(columns=["source"]), acts), r"impressions: missing column 'source'"),
        (lambda imps, acts: (imps.astype({"pin_id": str}), acts), r"impressions: \S+/part-0\.parquet: column 'pin_id' has type string, expected int64"),
        (lambda imps, acts: (pd.concat([imps, imps.iloc[:1]]), acts), r"impressions: duplicate impressions"),
        (lambda imps, acts: (imps, acts.assign(ts=acts["ts"] + 10 * 365 * DAY)), r"actions: \d+ rows break the rule 'no timestamps in the future' \(e.g. user_id="),
        (lambda imps, acts: (imps, acts.assign(action="share")), r"actions: column 'action' has \d+ rows with unknown action type"),
        (lambda imps, acts: (imps.assign(source="email"), acts), r"impressions: column 'source' has \d+ null or invalid values"),
    ],
    ids=["missing-column", "wrong-type", "duplicates", "future-actions", "unknown-action", "bad-source"],
)
def test_bad_input_fails_clearly_and_writes_nothing(spark, tmp_path, small_config, corrupt, message):
    imps, acts = corrupt(hand_impressions(), hand_actions(hand_impressions()))
    raw = tmp_path / "raw"
    _write_unchecked(raw, imps, acts)
    out = tmp_path / "instances"
    with pytest.raises(job.InputDataError, match=message):
        job.run(spark, str(raw), str(out), small_config, now_ms=T0 + 30 * DAY)
    assert not out.exists()
    assert not list(tmp_path.glob(".instances.tmp-*"))


def test_null_keys_are_rejected(spark, tmp_path, small_config):
    imps = hand_impressions()
    raw = tmp_path / "raw"
    write_hand_raw(raw, imps, hand_actions(imps))
    frame = spark.read.parquet(str(raw / "impressions"))
    nulled = frame.withColumn("user_id", F.when(F.col("position") == 0, F.lit(None).cast("long")).otherwise(F.col("user_id")))
    nulled.write.mode("overwrite").partitionBy("dt").parquet(str(tmp_path / "imps_with_nulls"))
    import shutil

    shutil.rmtree(raw / "impressions")
    shutil.copytree(tmp_path / "imps_with_nulls", raw / "impressions")
    with pytest.raises(job.InputDataError, match=r"impressions: column 'user_id' has \d+ null"):
        job.run(spark, str(raw), str(tmp_path / "out"), small_config)
    assert not (tmp_path / "out").exists()


def test_window_too_short_for_the_splits_is_refused(spark, tmp_path, small_config):
    imps = hand_impressions(days=2)
    write_hand_raw(tmp_path / "raw", imps, hand_actions(imps))
    with pytest.raises(job.InputDataError, match="too short"):
        job.run(spark, str(tmp_path / "raw"), str(tmp_path / "out"), small_config, start=date(2026, 1, 5), end=date(2026, 1, 6))


def _write_unchecked(path, impressions: pd.DataFrame, actions: pd.DataFrame):
    """Write raw tables with whatever columns and types the frames have (to simulate bad producers)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    write_hand_raw(path, hand_impressions(), hand_actions(hand_impressions()))
    for table, frame in ((schema.IMPRESSIONS, impressions), (schema.ACTIONS, actions)):
        import shutil

        shutil.rmtree(path / table)
        ts = frame["ts"] if "ts" in frame else pd.Series(np.full(len(frame), T0))
        frame = frame.assign(dt=pd.to_datetime(ts.astype(np.int64), unit="ms", utc=True).dt.strftime("%Y-%m-%d"))
        pads.write_dataset(pa.Table.from_pandas(frame, preserve_index=False), path / table, format="parquet",
                           partitioning=["dt"], partitioning_flavor="hive")


# --------------------------------------------------------------------------- the request-level layout
def test_job_writes_one_sequence_per_request_that_every_row_resolves_to(spark, tmp_path, small_config):
    import pandas as pd

    from homefeed.data import read_instances

    imps = hand_impressions()
    write_hand_raw(tmp_path / "raw", imps, hand_actions(imps))
    out = tmp_path / "instances"
    manifest = job.run(spark, str(tmp_path / "raw"), str(out), small_config.with_overrides({"instances": {"buckets": 3}}))
    rows = pd.read_parquet(out / schema.ROWS_DIR)  # a plain reader reads the rows table
    sequences = pd.read_parquet(out / schema.SEQUENCES_DIR)
    assert not set(schema.SEQUENCE_COLUMNS) & set(rows.columns) and schema.PIN_EMBEDDING not in rows.columns
    requests = rows[["user_id", "ts"]].drop_duplicates()
    assert len(sequences) == len(requests) < len(rows)  # one per distinct (user, cut-off), shared by its rows
    assert sequences[schema.SEQUENCE_KEY].is_unique
    assert manifest["sequence_rows"] == len(sequences)
    # Every row's key names a sequence of its own user and time, in its own split and bucket.
    joined = rows.merge(sequences, on=schema.SEQUENCE_KEY, suffixes=("", "_seq"), validate="many_to_one")
    assert len(joined) == len(rows)
    for column in ("user_id", "ts", schema.SPLIT, schema.BUCKET):
        assert (joined[column].astype(str) == joined[f"{column}_seq"].astype(str)).all(), column
    assert rows[schema.BUCKET].astype(int).nunique() > 1 and rows.groupby("user_id")[schema.BUCKET].nunique().max() == 1
    # One file per (split, bucket) in each table.
    for table in (schema.ROWS_DIR, schema.SEQUENCES_DIR):
        for directory in (out / table).glob("split=*/bucket=*"):
            assert len(list(directory.glob("*.parquet"))) == 1, directory
    view = read_instances(out, "test")
    assert view.num_rows == manifest["splits"]["test"]["rows"]
    assert set(schema.SEQUENCE_COLUMNS) | {schema.PIN_EMBEDDING} <= set(view.column_names)


def test_the_joined_view_matches_a_brute_force_scan_at_every_block_boundary(spark, tmp_path, small_config):
    """The whole job with seq_len 4 over 37 actions, read back through ``read_instances``: every
    row's sequence equals the latest 4 actions before ts - delay found by scanning the history;
    each request has three candidates sharing one sequence."""
    from homefeed.data import read_instances

    rng = np.random.default_rng(5)
    names = list(CODE)
    times = np.sort(rng.choice(np.arange(1, 3 * 86_400), size=37, replace=False)) * 1_000 + T0
    acts = pd.DataFrame({"user_id": 7, "pin_id": np.arange(500, 537), "ts": times.astype(np.int64), "action": [names[i % len(names)] for i in range(37)]})
    cutoffs = sorted({int(t) + DELAY + d for t in times[::2] for d in (0, 1)} | {T0 + 1, T0 + 3 * DAY + 5})
    imps = pd.DataFrame(
        [(f"r{i}", 7, 20 + c, ts, "pfy", c) for i, ts in enumerate(cutoffs) for c in range(3)],
        columns=["request_id", "user_id", "pin_id", "ts", "source", "position"],
    ).astype({"position": np.int32})
    write_hand_raw(tmp_path / "raw", imps, acts)
    out = tmp_path / "instances"
    cfg = small_config.with_overrides({"instances": {"seq_len": 4, "buckets": 2}})
    manifest = job.run(spark, str(tmp_path / "raw"), str(out), cfg, now_ms=T0 + 30 * DAY)
    assert manifest["sequence_rows"] == len(cutoffs)
    seen = 0
    for split in schema.SPLITS:
        for row in read_instances(out, split).to_pylist():
            before = [a for a in acts.itertuples(index=False) if a.ts < row["ts"] - DELAY][::-1][:4]
            assert row[schema.SEQ_PIN_ID] == [a.pin_id for a in before], row["request_id"]
            assert row[schema.SEQ_ACTION] == [CODE[a.action] for a in before], row["request_id"]
            assert row[schema.SEQ_TS] == [a.ts for a in before], row["request_id"]
            seen += 1
    assert seen == len(imps)


def test_an_edit_that_keeps_the_file_size_still_rebuilds(spark, tmp_path, small_config):
    """The "same inputs" check hashed path + size: two values swapped inside a raw file left the
    stale dataset in place (issue 21, item 6)."""
    imps = hand_impressions()
    raw = tmp_path / "raw"
    write_hand_raw(raw, imps, hand_actions(imps))
    before = job._input_listing(str(raw))
    target = sorted((raw / schema.ACTIONS).rglob("*.parquet"))[0]
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle], data[middle + 1] = data[middle + 1] ^ 0xFF, data[middle]  # same size, other bytes
    original = target.read_bytes()
    target.write_bytes(bytes(data))
    assert target.stat().st_size == len(original)
    assert job._input_listing(str(raw)) != before
    target.write_bytes(original)
    assert job._input_listing(str(raw)) == before
    # Through the job: a changed value (a repositioned impression) is rebuilt, not reused.
    out = tmp_path / "instances"
    first = job.run(spark, str(raw), str(out), small_config)
    write_hand_raw(raw, imps.assign(position=imps["position"].iloc[::-1].to_numpy()), hand_actions(imps))
    second = job.run(spark, str(raw), str(out), small_config)
    assert second["fingerprint"] != first["fingerprint"]


# --------------------------------------------------------------------------- input the job refuses or names (issue 21, items 8-10)
def _rewrite(raw, table: str, change) -> None:
    """Apply ``change`` (a pandas frame → frame) to every file of a raw table, keeping its schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from homefeed import storage

    for path in storage.list_files(raw / table):
        original = pq.read_table(path)
        pq.write_table(pa.Table.from_pandas(change(original.to_pandas()), schema=original.schema, preserve_index=False), path)


def _hand_raw(tmp_path):
    imps = hand_impressions()
    write_hand_raw(tmp_path / "raw", imps, hand_actions(imps))
    return tmp_path / "raw"


def _nan_first_embedding(pins: pd.DataFrame) -> pd.DataFrame:
    pins = pins.copy()
    pins.at[0, "embedding"] = np.full(schema.EMBEDDING_DIM, np.nan, np.float32)
    return pins


@pytest.mark.parametrize(
    "table, change, message",
    [
        # Before: each of these was built and published; only the GX suites (not run by
        # `build-instances` alone) rejected them.
        (schema.IMPRESSIONS, lambda f: f.assign(ts=f["ts"] + (f["position"] == 0) * 10 * 365 * DAY),
         r"impressions: \d+ rows break the rule 'ts falls inside its dt partition \(UTC day\)' \(e\.g\. request_id="),
        (schema.PINS, _nan_first_embedding, r"pins: 1 rows break the rule 'embedding has 16 finite values' \(e\.g\. pin_id=10"),
        (schema.PINS, lambda f: f.assign(repin_count=-f["repin_count"]), r"pins: \d+ rows break the rule 'repin_count >= 0'"),
        (schema.USERS, lambda f: f.assign(follower_count=-1), r"users: \d+ rows break the rule 'follower_count >= 0' \(e\.g\. user_id="),
        # Before: half the impressions named unknown pins and the job published (item 8).
        (schema.PINS, lambda f: f[f["pin_id"] % 2 == 0],
         r"impressions: 12 of 24 impressions \(50\.0%\) name pins absent from the pins snapshot \(e\.g\. pin_id \[11, 13, 15\]\); validation\.max_unknown_pin_rate"),
    ],
    ids=["ts-outside-dt", "nan-embedding", "negative-pin-count", "negative-user-count", "unknown-pins"],
)
def test_the_job_alone_enforces_the_contract_rules(spark, tmp_path, small_config, table, change, message):
    raw = _hand_raw(tmp_path)
    _rewrite(raw, table, change)
    with pytest.raises(job.InputDataError, match=message):
        job.run(spark, str(raw), str(tmp_path / "out"), small_config, now_ms=T0 + 30 * DAY)
    assert not (tmp_path / "out").exists()


def test_an_empty_day_inside_the_window_is_refused_naming_it(spark, tmp_path, small_config):
    # Before: the missing day's 2,600 train rows were silently dropped (item 9).
    import shutil

    raw = _hand_raw(tmp_path)
    shutil.rmtree(raw / schema.IMPRESSIONS / "dt=2026-01-06")
    with pytest.raises(job.InputDataError, match=r"impressions: no rows for dt=2026-01-06 inside the window 2026-01-05\.\.2026-01-08"):
        job.run(spark, str(raw), str(tmp_path / "out"), small_config)


def test_an_empty_newest_day_is_refused_when_run_directly_too(spark, tmp_path, small_config):
    """Before: run without --end, the job took the newest day with rows and skipped it without a word."""
    import pyarrow.parquet as pq

    raw = _hand_raw(tmp_path)
    newest = raw / schema.IMPRESSIONS / "dt=2026-01-09"
    newest.mkdir(exist_ok=True)
    pq.write_table(schema.arrow_schema(schema.IMPRESSIONS, with_dt=False).empty_table(), newest / "part-0.parquet")
    with pytest.raises(job.InputDataError, match=r"no rows for dt=2026-01-09 inside the window"):
        job.run(spark, str(raw), str(tmp_path / "out"), small_config)


def test_a_file_of_another_type_or_a_truncated_file_is_named_in_one_line(spark, tmp_path, small_config):
    # Before: 300 lines of Py4J stack trace with the file buried (item 10).
    import pyarrow.parquet as pq

    raw = _hand_raw(tmp_path)
    one_day = sorted((raw / schema.IMPRESSIONS).glob("dt=*/*.parquet"))[1]
    table = pq.read_table(one_day)
    pq.write_table(table.set_column(table.schema.get_field_index("ts"), "ts", table["ts"].cast("string")), one_day)
    with pytest.raises(job.InputDataError) as refused:
        job.run(spark, str(raw), str(tmp_path / "out"), small_config)
    assert str(refused.value) == f"impressions: {one_day}: column 'ts' has type string, expected int64"

    raw = _hand_raw(tmp_path / "second")
    victim = sorted((raw / schema.ACTIONS).glob("dt=*/*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(job.InputDataError, match=rf"^actions: {victim} is not a readable Parquet file \(") as refused:
        job.run(spark, str(raw), str(tmp_path / "second" / "out"), small_config)
    assert "\n" not in str(refused.value)


def test_served_events_join_the_raw_actions_counted_once(spark, tmp_path, small_config):
    """homefeed serve's event log (acknowledged /events) feeds the next retraining (issue 19)."""
    from homefeed.event_log import EventLog

    imps = hand_impressions()
    acts = hand_actions(imps)  # a click on every other impression
    raw = tmp_path / "raw"
    write_hand_raw(raw, imps, acts)
    target, logged_twice = imps.iloc[1], acts.iloc[0]  # the target has no raw action
    log = EventLog(tmp_path / "events")
    log.append(target["user_id"], target["pin_id"], "repin", target["ts"] + 5_000)
    log.append(logged_twice["user_id"], logged_twice["pin_id"], logged_twice["action"], logged_twice["ts"])
    log.close()
    events = job.event_log_roots([str(tmp_path / "events"), str(tmp_path / "nothing-logged")])
    assert events == (str(tmp_path / "events"),)
    served = job.run(spark, str(raw), str(tmp_path / "with"), small_config, event_logs=events)
    alone = job.run(spark, str(raw), str(tmp_path / "without"), small_config)
    assert served["input_rows"]["actions"] == alone["input_rows"]["actions"] + 1  # the re-logged click once
    assert served["fingerprint"] != alone["fingerprint"] and served["event_logs"] == list(events)

    def repin_of_target(out):
        rows = pd.read_parquet(out / schema.ROWS_DIR)
        hit = rows[(rows["request_id"] == target["request_id"]) & (rows["pin_id"] == target["pin_id"])]
        return int(hit[schema.label_column("repin")].iloc[0])

    assert (repin_of_target(tmp_path / "with"), repin_of_target(tmp_path / "without")) == (1, 0)
