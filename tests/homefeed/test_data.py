"""The instance readers: the joined per-impression view and the request-level training stream."""

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from homefeed import schema, storage
from homefeed.data import InstanceStream, read_instances, to_tensors


def per_row_sequences(batch):
    """Each row's (pin_id, ts, its sequence's pins and actions without padding), from a request-level batch."""
    index = batch[schema.SEQ_INDEX]
    pins, actions = batch[schema.SEQ_PIN_ID][index], batch[schema.SEQ_ACTION][index]
    return [
        (int(p), int(t), tuple(int(x) for x in seq if x), tuple(int(a) for a in act if a))
        for p, t, seq, act in zip(batch["pin_id"], batch["ts"], pins, actions)
    ]


def view_sequences(table):
    return Counter(
        (r["pin_id"], r["ts"], tuple(r[schema.SEQ_PIN_ID]), tuple(r[schema.SEQ_ACTION])) for r in table.to_pylist()
    )


@pytest.mark.parametrize("shuffle, unit", [(False, "request"), (True, "request"), (True, "row")], ids=["ordered", "by-request", "by-row"])
def test_stream_gives_every_row_its_own_sequence_once_per_epoch(instances_dir, shuffle, unit):
    # 100 does not divide a bucket's rows, so batches span two buckets.
    stream = InstanceStream(str(instances_dir), "train", 100, shuffle=shuffle, seed=3, shuffle_unit=unit)
    batches = list(stream)
    assert sum(len(b["pin_id"]) for b in batches) == stream.rows
    unique_sequences = 0
    for batch in batches:
        u = batch[schema.SEQ_PIN_ID].shape[0]
        assert batch[schema.SEQ_PIN_ID].shape == batch[schema.SEQ_ACTION].shape == batch[schema.SEQ_TS].shape == (u, schema.SEQ_LEN)
        assert batch[schema.SEQ_INDEX].shape == batch["pin_id"].shape and int(batch[schema.SEQ_INDEX].max()) < u
        unique_sequences += u
    streamed = Counter(row for batch in batches for row in per_row_sequences(batch))
    assert streamed == view_sequences(read_instances(instances_dir, "train"))
    if unit == "request":  # a request's candidates share one sequence in one batch
        assert unique_sequences < stream.rows / 2


def test_shuffling_by_request_keeps_a_requests_rows_together_and_changes_the_order(instances_dir):
    def order(seed, unit):
        stream = InstanceStream(str(instances_dir), "train", 64, shuffle=True, seed=seed, shuffle_unit=unit)
        return [(int(p), int(t)) for b in stream for p, t in zip(b["pin_id"], b["ts"])]

    ordered = [(int(p), int(t)) for b in InstanceStream(str(instances_dir), "train", 64) for p, t in zip(b["pin_id"], b["ts"])]
    by_request = order(1, "request")
    assert by_request != ordered and sorted(by_request) == sorted(ordered)
    assert by_request != order(2, "request")
    # Within a request (one ts) rows stay adjacent: the ts sequence changes value once per request.
    changes = lambda rows: sum(a[1] != b[1] for a, b in zip(rows, rows[1:]))  # noqa: E731
    assert changes(by_request) < changes(order(1, "row")) / 2
    with pytest.raises(ValueError, match="shuffle_unit"):
        InstanceStream(str(instances_dir), "train", 64, shuffle_unit="user")


def test_to_tensors_pads_each_requests_sequence_once(instances_dir):
    test = read_instances(instances_dir, "test")
    batch = to_tensors(test, schema.SEQ_LEN)
    requests = {(r["user_id"], r["ts"]) for r in test.select(["user_id", "ts"]).to_pylist()}
    assert batch[schema.SEQ_PIN_ID].shape == (len(requests), schema.SEQ_LEN)
    assert Counter(per_row_sequences(batch)) == view_sequences(test)


def test_one_user_n_candidates_is_one_sequence(instances_dir):
    row = read_instances(instances_dir, "test").slice(0, 1)
    table = pa.concat_tables([row] * 7)
    batch = to_tensors(table, schema.SEQ_LEN)
    assert batch[schema.SEQ_PIN_ID].shape[0] == 1 and batch[schema.SEQ_INDEX].tolist() == [0] * 7


def test_a_row_whose_sequence_is_missing_is_named(instances_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(instances_dir, broken)
    for path in (broken / schema.SEQUENCES_DIR / "split=test").rglob("*.parquet"):
        table = pq.ParquetFile(path).read()
        pq.write_table(table.slice(1), path)  # one request's sequence lost
    with pytest.raises(storage.StorageError, match="sequence_key with no row in sequences/"):
        read_instances(broken, "test")
    with pytest.raises(storage.StorageError, match="sequence_key with no row in sequences/"):
        list(InstanceStream(str(broken), "test", 64))


def test_the_old_per_impression_layout_says_how_to_rebuild(tmp_path):
    old = tmp_path / "old"
    (old / "split=train").mkdir(parents=True)
    (old / schema.SUCCESS_MARKER).write_text("")
    with pytest.raises(storage.StorageError, match="old per-impression layout.*homefeed build-instances"):
        read_instances(old, "train")


def test_view_carries_the_candidates_content_embedding_from_the_pin_table(instances_dir):
    from homefeed.data import read_pin_features

    ids, embeddings = read_pin_features(instances_dir)
    by_id = dict(zip(ids.tolist(), embeddings))
    for row in read_instances(instances_dir, "validation").slice(0, 50).to_pylist():
        np.testing.assert_allclose(row[schema.PIN_EMBEDDING], by_id[row["pin_id"]], rtol=1e-6)
    assert torch.is_tensor(to_tensors(read_instances(instances_dir, "validation").slice(0, 3))["dense"])


def test_read_instances_takes_sequence_columns_among_the_columns_asked_for(instances_dir):
    # Before: asking for seq_pin_id failed ("No match for FieldRef.Name(seq_pin_id)"): rows were
    # read with every asked column, and the sequences live in the other table.
    table = read_instances(instances_dir, "test", columns=("user_id", "ts", schema.SEQ_PIN_ID))
    assert table.column_names[:2] == ["user_id", "ts"] and schema.SEQ_PIN_ID in table.column_names
    assert "label_repin" not in table.column_names
    full = read_instances(instances_dir, "test")
    assert table.column(schema.SEQ_PIN_ID).to_pylist() == full.column(schema.SEQ_PIN_ID).to_pylist()


def test_an_instance_dataset_is_opened_once_and_read_through_it(instances_dir, tmp_path):
    import pytest

    from homefeed import storage
    from homefeed.data import InstanceDataset, read_instances

    dataset = InstanceDataset.open(instances_dir)
    assert InstanceDataset.of(dataset) is dataset and InstanceDataset.of(str(instances_dir)) == dataset
    assert dataset.fingerprint == storage.read_manifest(instances_dir)["fingerprint"]
    assert dataset.read("test").num_rows == read_instances(instances_dir, "test").num_rows
    assert set(dataset.label_rates("train")) >= {"repin", "hide"} and ".." in dataset.window
    with pytest.raises(storage.StorageError):
        InstanceDataset.open(tmp_path)  # nothing published there


def test_request_sequences_give_every_candidate_its_requests_first_sequence():
    from homefeed.data import with_request_sequences

    # Request a: three rows at different times, the middle one earliest; request b: one row.
    table = pa.table({
        "request_id": ["a", "a", "b", "a"],
        "user_id": [1, 1, 2, 1],
        "ts": [300, 100, 50, 100],
        schema.SEQ_PIN_ID: [[9, 8, 7], [8, 7], [5], [8, 7, 6]],
        schema.SEQ_ACTION: [[1, 1, 2], [1, 2], [3], [1, 2, 2]],
        schema.SEQ_TS: [[250, 90, 80], [90, 80], [40], [95, 90, 80]],
        "label": [1, 0, 0, 0],
    })
    frozen = with_request_sequences(table)
    assert frozen.column(schema.SEQ_PIN_ID).to_pylist() == [[8, 7], [8, 7], [5], [8, 7]]  # a's earliest, first of a tie
    assert frozen.column(schema.SEQ_TS).to_pylist() == [[90, 80], [90, 80], [40], [90, 80]]
    assert frozen.column("ts").to_pylist() == [300, 100, 50, 100]  # rows keep their own time, labels, order
    assert frozen.column("label").to_pylist() == [1, 0, 0, 0]
    # No row reads an action at or after its own time.
    for ts, seq_ts in zip(frozen.column("ts").to_pylist(), frozen.column(schema.SEQ_TS).to_pylist()):
        assert all(t < ts for t in seq_ts)
    assert with_request_sequences(table.slice(0, 0)).num_rows == 0
