"""Online features equal the Spark job's instance rows for the same events (no training/serving skew)."""

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from homefeed import features, schema, storage
from homefeed.data import read_instances


def _raw_actions(raw_dir) -> list[dict]:
    files = storage.list_files(raw_dir / schema.ACTIONS)
    return pa.concat_tables(pq.ParquetFile(f).read() for f in files).to_pylist()


def _replayed_rows(raw_dir, instances_dir, manifest, sample: int, keep_margin: int):
    """Replay the raw actions in time order into a store and compute each sampled test row online."""
    snapshot = features.FeatureSnapshot.load(raw_dir)
    store = features.InMemorySequenceStore(snapshot, manifest["config"]["seq_len"], margin=keep_margin)
    actions = defaultdict(list)
    for a in sorted(_raw_actions(raw_dir), key=lambda a: a["ts"]):
        actions[a["user_id"]].append(a)
    test = read_instances(instances_dir, "test").to_pylist()
    rng = np.random.default_rng(3)
    picked = sorted((test[i] for i in rng.choice(len(test), size=min(sample, len(test)), replace=False)), key=lambda r: r["ts"])
    delivered = defaultdict(int)
    online = []
    for row in picked:
        user_actions = actions[row["user_id"]]
        # Events arrive as they happen: everything up to the request, including the last seconds
        # the cut-off must hide.
        while delivered[row["user_id"]] < len(user_actions) and user_actions[delivered[row["user_id"]]]["ts"] <= row["ts"]:
            a = user_actions[delivered[row["user_id"]]]
            store.append(a["user_id"], a["pin_id"], a["action"], a["ts"])
            delivered[row["user_id"]] += 1
        candidate = features.Candidate(row["pin_id"], row["ts"], row["source"], row["position"])
        rows = features.raw_rows(snapshot, store.history(row["user_id"]), row["user_id"], row["ts"], [candidate],
                                 manifest["config"]["delay_ms"], manifest["config"]["seq_len"])
        online.append(features.instance_table(rows, manifest["feature_stats"]).to_pylist()[0])
    return picked, online


def _assert_same_features(offline: dict, online: dict) -> None:
    for name in schema.DENSE_FEATURES:
        assert online[name] == pytest.approx(offline[name], rel=1e-5, abs=1e-5), name
    for name in (*schema.CATEGORICAL_FEATURES, *schema.SEQUENCE_COLUMNS):
        assert online[name] == offline[name], name
    assert online[schema.PIN_EMBEDDING] == pytest.approx(offline[schema.PIN_EMBEDDING])


def test_online_features_equal_the_spark_job_rows(raw_dir, instances_dir):
    manifest = storage.read_manifest(instances_dir)
    offline, online = _replayed_rows(raw_dir, instances_dir, manifest, sample=300, keep_margin=100)
    with_history = sum(bool(r[schema.SEQ_PIN_ID]) for r in offline)
    assert with_history > 50, "the sample must exercise non-empty sequences"
    for off, on in zip(offline, online):
        _assert_same_features(off, on)


def test_eviction_keeps_counts_exact():
    snapshot = features.FeatureSnapshot(pins={7: {"pin_id": 7, "category": 3, "owner_id": 9}}, users={})
    # Exact while at most `margin` events are newer than the cut-off: here two (5 s and 6 s).
    small = features.InMemorySequenceStore(snapshot, seq_len=2, margin=2)
    large = features.InMemorySequenceStore(snapshot, seq_len=2, margin=100)
    for ts in (5, 1, 4, 2, 3, 6):  # out of order on purpose
        for store in (small, large):
            store.append(1, 7, "repin" if ts % 2 else "hide", ts * 1000)
    assert len(small.history(1).events) == 4
    for cutoff in (4500, 7000):
        a, b = features.visible_history(small.history(1), cutoff), features.visible_history(large.history(1), cutoff)
        assert (a.prior_actions, a.positives_by_category[3], a.positives_by_owner[9]) == (
            b.prior_actions, b.positives_by_category[3], b.positives_by_owner[9])
        assert [e.ts for e in a.newest_first[:2]] == [e.ts for e in b.newest_first[:2]]
    assert features.visible_history(large.history(1), 4500).prior_actions == 4  # ts 1..4 s, strictly before 4.5 s


def test_cold_start_user_and_pin_take_documented_defaults():
    snapshot = features.FeatureSnapshot(pins={}, users={})
    stats = {f: {"mean": 0.5, "std": 2.0} for f in schema.DENSE_FEATURES}
    rows = features.raw_rows(snapshot, None, 42, 10**12, [features.Candidate(99, 1, "pfy")], delay_ms=30_000, seq_len=100)
    row = features.instance_table(rows, stats).to_pylist()[0]
    assert row["pin_repin_count"] == pytest.approx((0.0 - 0.5) / 2.0)  # a missing count is 0 before log1p
    assert row["pin_spam_score"] == pytest.approx(0.0)  # a missing score is the training mean
    assert (row["pin_category"], row["user_gender"], row["source_id"]) == (0, 0, 2)
    assert row[schema.SEQ_PIN_ID] == [] and row[schema.PIN_EMBEDDING] == [0.0] * schema.EMBEDDING_DIM


def test_unknown_action_is_rejected():
    store = features.InMemorySequenceStore(features.FeatureSnapshot(pins={}, users={}))
    with pytest.raises(ValueError, match="unknown action 'upvote'"):
        store.append(1, 2, "upvote", 3)


def test_concurrent_appends_lose_nothing_and_keep_the_order():
    import threading

    store = features.InMemorySequenceStore(features.FeatureSnapshot(pins={}, users={}), seq_len=20, margin=10)

    def writer(offset: int) -> None:
        for i in range(500):
            store.append(1, offset, "click", (i * 8 + offset) * 1000)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = store.history(1)
    assert history.evicted_total + len(history.events) == 4000
    assert history.events == sorted(history.events) and len(history.events) == 30
    assert history.events[-1].ts == (499 * 8 + 7) * 1000


def test_a_store_bootstrapped_from_the_log_gives_the_spark_job_rows(raw_dir, instances_dir, tmp_path):
    """`homefeed sequences load --until T` semantics: loaded up to each sampled request's time, the
    durable store's history yields that request's instance row (loads are incremental)."""
    from homefeed.sequence_store import SqliteSequenceStore, load_actions

    manifest = storage.read_manifest(instances_dir)
    seq_len = manifest["config"]["seq_len"]
    snapshot = features.FeatureSnapshot.load(raw_dir)
    store = SqliteSequenceStore(tmp_path / "sequences.sqlite", snapshot, seq_len)
    test = read_instances(instances_dir, "test").to_pylist()
    rng = np.random.default_rng(5)
    picked = sorted((test[i] for i in rng.choice(len(test), size=min(40, len(test)), replace=False)), key=lambda r: r["ts"])
    loaded = 0
    for row in picked:
        loaded += load_actions(store, raw_dir, until=row["ts"], progress=lambda _: None)["events_added"]
        candidate = features.Candidate(row["pin_id"], row["ts"], row["source"], row["position"])
        rows = features.raw_rows(snapshot, store.history(row["user_id"]), row["user_id"], row["ts"], [candidate],
                                 manifest["config"]["delay_ms"], seq_len)
        _assert_same_features(row, features.instance_table(rows, manifest["feature_stats"]).to_pylist()[0])
    assert sum(bool(r[schema.SEQ_PIN_ID]) for r in picked) > 10 and loaded > 1000
    assert load_actions(store, raw_dir, until=picked[-1]["ts"], progress=lambda _: None)["events_added"] == 0


def test_rows_get_the_vectors_a_model_was_trained_with():
    from homefeed.embeddings import PinVectors, vector_column

    snapshot = features.FeatureSnapshot(pins={1: {"embedding": [1.0, 0.0]}, 2: {"embedding": [0.0, 2.0]}}, users={})
    rows = pa.table({"pin_id": pa.array([1, 2, 3], pa.int64()), schema.PIN_EMBEDDING: pa.array([[9.0, 9.0]] * 3, pa.list_(pa.float32()))})
    content = features.with_vectors_trained_on(rows, None, snapshot)
    assert vector_column(content, schema.PIN_EMBEDDING).tolist() == [[1, 0], [0, 2], [0, 0]]  # pin 3: not in the snapshot
    projection = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 5]], np.float32)  # [content, 1] → 3 learned dimensions
    learned = PinVectors(np.array([2]), np.array([[7, 7, 7]], np.float32), projection, {"fingerprint": "f"})
    read = vector_column(features.with_vectors_trained_on(rows, learned, snapshot), schema.PIN_EMBEDDING)
    assert read.tolist() == [[1, 1, 6], [7, 7, 7], [0, 0, 5]]  # learned where the table has the pin, projected elsewhere
    assert content.column("pin_id").to_pylist() == [1, 2, 3] and rows.column(schema.PIN_EMBEDDING).to_pylist()[0] == [9.0, 9.0]
