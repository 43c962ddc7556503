"""Streams instance Parquet into padded torch batches, sharded per rank.

Nothing is materialised whole: files are read record batch by record batch, shuffled within a
buffer of a few batches, and each rank takes every ``world_size``-th batch. For DDP every rank
yields the same number of batches (the remainder is dropped in training), or ranks would hang
waiting for each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset

from homefeed import schema, storage


NEURAL_COLUMNS = (
    "request_id", "user_id", "pin_id", "ts", "source", "position", schema.SEGMENT,
    *schema.LABEL_COLUMNS, schema.SAMPLE_WEIGHT, *schema.DENSE_FEATURES, *schema.CATEGORICAL_FEATURES,
    *schema.SEQUENCE_COLUMNS,
)


def split_files(instances_dir: str | Path, split: str) -> list[Path]:
    root = storage.require_published(instances_dir, "instances")
    files = storage.list_files(root / f"{schema.SPLIT}={split}")
    if not files:
        raise storage.StorageError(f"instances at {root} have no rows in split {split!r}")
    return files


def split_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def read_split(instances_dir: str | Path, split: str, columns: tuple[str, ...] | None = None) -> pa.Table:
    return pa.concat_tables(pq.read_table(f, columns=list(columns) if columns else None) for f in split_files(instances_dir, split))


def read_pin_features(instances_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(pin_ids, embeddings) published with the instances."""
    table = pq.read_table(storage.local_path(instances_dir) / schema.PIN_FEATURES_DIR)
    ids = table.column("pin_id").to_numpy()
    emb = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return ids, emb.reshape(len(ids), -1)


def pad_lists(column: pa.ChunkedArray | pa.Array, length: int, dtype: np.dtype) -> np.ndarray:
    """A list column as a (N, length) array, truncated and right-padded with 0."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = array.cast(pa.list_(pa.int64()))
    offsets = array.offsets.to_numpy()
    values = array.flatten().to_numpy(zero_copy_only=False)
    starts, sizes = offsets[:-1], np.minimum(np.diff(offsets), length)
    out = np.zeros((len(array), length), dtype=dtype)
    rows = np.repeat(np.arange(len(array)), sizes)
    cols = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    out[rows, cols] = values[np.repeat(starts, sizes) + cols]
    return out


def to_tensors(table: pa.Table | pa.RecordBatch, seq_len: int = schema.SEQ_LEN) -> dict[str, torch.Tensor]:
    """One Arrow batch of instances → the ranker's input dict (+ labels and weights)."""
    col = table.column
    dense = np.stack([col(f).to_numpy(zero_copy_only=False).astype(np.float32) for f in schema.DENSE_FEATURES], axis=1)
    batch = {
        "dense": torch.from_numpy(np.nan_to_num(dense)),
        "pin_id": torch.from_numpy(col("pin_id").to_numpy(zero_copy_only=False).astype(np.int64)),
        "ts": torch.from_numpy(col("ts").to_numpy(zero_copy_only=False).astype(np.int64)),
        schema.SEQ_PIN_ID: torch.from_numpy(pad_lists(col(schema.SEQ_PIN_ID), seq_len, np.int64)),
        schema.SEQ_ACTION: torch.from_numpy(pad_lists(col(schema.SEQ_ACTION), seq_len, np.int64)),
        schema.SEQ_TS: torch.from_numpy(pad_lists(col(schema.SEQ_TS), seq_len, np.int64)),
    }
    for name, size in schema.CATEGORICAL_FEATURES.items():
        values = col(name).to_numpy(zero_copy_only=False).astype(np.int64)
        batch[name] = torch.from_numpy(np.clip(values, 0, size - 1))
    if schema.LABEL_COLUMNS[0] in table.schema.names:
        labels = np.stack([col(c).to_numpy(zero_copy_only=False) for c in schema.LABEL_COLUMNS], axis=1)
        batch["labels"] = torch.from_numpy(labels.astype(np.float32))
        batch["sample_weight"] = torch.from_numpy(col(schema.SAMPLE_WEIGHT).to_numpy(zero_copy_only=False).astype(np.float32))
    return batch


@dataclass
class InstanceStream(IterableDataset):
    """Padded batches of one split for one rank."""

    instances_dir: str
    split: str
    batch_size: int
    seq_len: int = schema.SEQ_LEN
    shuffle: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_remainder: bool = False
    shuffle_buffer_batches: int = 8

    def __post_init__(self) -> None:
        super().__init__()
        self.files = split_files(self.instances_dir, self.split)
        self.rows = split_rows(self.files)
        self.epoch = 0

    def batches_per_rank(self) -> int:
        if self.drop_remainder:
            return self.rows // (self.batch_size * self.world_size)
        return -(-self.rows // (self.batch_size * self.world_size))

    def _record_batches(self, rng: np.random.Generator) -> Iterator[pa.Table]:
        files = list(self.files)
        if self.shuffle:
            rng.shuffle(files)
        buffer: list[pa.RecordBatch] = []
        for path in files:
            for record_batch in pq.ParquetFile(path).iter_batches(batch_size=self.batch_size, columns=list(NEURAL_COLUMNS)):
                buffer.append(record_batch)
                if len(buffer) >= self.shuffle_buffer_batches:
                    yield from self._drain(buffer, rng)
                    buffer = []
        if buffer:
            yield from self._drain(buffer, rng)

    def _drain(self, buffer: list[pa.RecordBatch], rng: np.random.Generator) -> Iterator[pa.Table]:
        table = pa.Table.from_batches(buffer)
        if self.shuffle:
            table = table.take(pa.array(rng.permutation(table.num_rows)))
        for start in range(0, table.num_rows, self.batch_size):
            yield table.slice(start, self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        limit = self.batches_per_rank()
        produced = 0
        pending: pa.Table | None = None
        index = 0
        for table in self._record_batches(rng):
            pending = table if pending is None else pa.concat_tables([pending, table])
            while pending.num_rows >= self.batch_size:
                full, pending = pending.slice(0, self.batch_size), pending.slice(self.batch_size)
                if index % self.world_size == self.rank:
                    if produced >= limit:
                        return
                    produced += 1
                    yield to_tensors(full, self.seq_len)
                index += 1
        if pending is not None and pending.num_rows and not self.drop_remainder and index % self.world_size == self.rank and produced < limit:
            yield to_tensors(pending, self.seq_len)
