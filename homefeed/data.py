"""Reads published instances: the per-impression view for people and tools, request-level batches
for training.

The instance dataset (``jobs/build_instances.py``) holds two tables bucketed by user: ``rows``
(one per impression, with a ``sequence_key``) and ``sequences`` (one per request). Two readers:

- :func:`read_instances` joins them back into the per-impression view (the three ``seq_*`` list
  columns and the candidate's ``pin_embedding`` on every row), for notebooks, tests, baselines
  and evaluation: ``homefeed instances show DIR --split S``.
- :class:`InstanceStream` streams one split bucket by bucket, holding one bucket's sequences at a
  time, and yields batches that carry each sequence of the batch **once**: ``seq_*`` are
  ``(U, L)`` and ``seq_index`` ``(B,)`` maps each row to its sequence (RecD's inverse index).
  Shuffling permutes a buffer of a few batches by row (the default: rows of one request spread
  over batches, whose sequences then simply repeat) or by request (``shuffle_unit="request"``:
  a request's candidates stay together, so its sequence is carried and encoded once). For DDP
  every rank yields the same number of batches (the remainder is dropped in training), or ranks
  would hang waiting for each other.

:func:`to_tensors` turns any per-impression table (the joined view, the service's online rows)
into the same request-level batch, deduplicating sequences by (user_id, ts).
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
from homefeed.embeddings import list_column, vector_column

ROW_INPUT_COLUMNS = (
    "request_id", "user_id", "pin_id", "ts", "source", "position", schema.SEGMENT,
    *schema.LABEL_COLUMNS, schema.SAMPLE_WEIGHT, *schema.DENSE_FEATURES, *schema.CATEGORICAL_FEATURES,
    schema.SEQUENCE_KEY,
)


def labels_and_weights(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N, H) int64 in schema.HEADS order, sample weights (N,) float64) of instance rows."""
    labels = np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in schema.LABEL_COLUMNS], axis=1)
    return labels.astype(np.int64), table.column(schema.SAMPLE_WEIGHT).to_numpy(zero_copy_only=False).astype(np.float64)


# --------------------------------------------------------------------------- files
def instances_root(instances_dir: str | Path) -> Path:
    """The published dataset's root; a clear error for the per-impression layout of older runs."""
    root = storage.require_published(instances_dir, "instances")
    if not (root / schema.ROWS_DIR).is_dir():
        if any(root.glob(f"{schema.SPLIT}=*")):
            raise storage.StorageError(
                f"instances at {root} use the old per-impression layout (no {schema.ROWS_DIR}/ and {schema.SEQUENCES_DIR}/ "
                "tables); rebuild them with `homefeed build-instances --raw RAW --out DIR` (or re-run the pipeline)"
            )
        raise storage.StorageError(f"instances at {root} have no {schema.ROWS_DIR}/ table")
    return root


def bucket_files(instances_dir: str | Path, split: str, table: str = schema.ROWS_DIR) -> dict[int, list[Path]]:
    """``{bucket: [parquet files]}`` of one table's split, in bucket order."""
    split_root = instances_root(instances_dir) / table / f"{schema.SPLIT}={split}"
    buckets: dict[int, list[Path]] = {}
    for directory in sorted(split_root.glob(f"{schema.BUCKET}=*"), key=lambda p: int(p.name.split("=", 1)[1])):
        files = storage.list_files(directory)
        if files:
            buckets[int(directory.name.split("=", 1)[1])] = files
    if table == schema.ROWS_DIR and not buckets:
        raise storage.StorageError(f"instances at {split_root.parents[1]} have no rows in split {split!r}")
    return buckets


def split_files(instances_dir: str | Path, split: str) -> list[Path]:
    return [f for files in bucket_files(instances_dir, split).values() for f in files]


def split_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _read(files: list[Path], columns: tuple[str, ...] | None = None) -> pa.Table:
    return pa.concat_tables(pq.read_table(f, columns=list(columns) if columns else None) for f in files)


def read_rows(instances_dir: str | Path, split: str, columns: tuple[str, ...] | None = None) -> pa.Table:
    """The ``rows`` table of one split (no sequences): what the baselines' folds and labels need."""
    return _read(split_files(instances_dir, split), columns)


def read_pin_features(instances_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(pin_ids, embeddings) published with the instances."""
    directory = storage.local_path(instances_dir) / schema.PIN_FEATURES_DIR
    if not directory.is_dir():
        raise storage.StorageError(f"instances at {storage.local_path(instances_dir)} have no {schema.PIN_FEATURES_DIR}/ table; "
                                   "rebuild them with `homefeed build-instances` (the job rebuilds a damaged dataset)")
    table = pq.read_table(directory)
    return table.column("pin_id").to_numpy(), vector_column(table)


# --------------------------------------------------------------------------- sequences of one bucket
def _sorted_sequences(files: list[Path]) -> pa.Table:
    """One bucket's ``sequences`` rows, sorted by ``sequence_key`` (empty when it has none)."""
    table = _read(files, schema.SEQUENCE_TABLE_COLUMNS) if files else _empty_sequences()
    return table.take(pa.array(np.argsort(table.column(schema.SEQUENCE_KEY).to_numpy(), kind="stable")))


def _positions(sorted_keys: np.ndarray, keys: np.ndarray, where: str) -> np.ndarray:
    """Index of each key in ``sorted_keys``; a key without a sequence is a broken dataset, said so."""
    found = np.searchsorted(sorted_keys, keys)
    missing = found == len(sorted_keys)
    missing[~missing] = sorted_keys[found[~missing]] != keys[~missing]
    if missing.any():
        raise storage.StorageError(
            f"{where}: {int(missing.sum())} rows have a {schema.SEQUENCE_KEY} with no row in {schema.SEQUENCES_DIR}/ "
            f"(e.g. {int(keys[np.argmax(missing)])})"
        )
    return found


@dataclass(frozen=True)
class BucketSequences:
    """One bucket's sequences, sorted by key and padded once: (S,), (S, L) × 3."""

    keys: np.ndarray
    pin_id: np.ndarray
    action: np.ndarray
    ts: np.ndarray

    @classmethod
    def load(cls, files: list[Path], seq_len: int) -> "BucketSequences":
        table = _sorted_sequences(files)
        return cls(
            table.column(schema.SEQUENCE_KEY).to_numpy(),
            pad_lists(table.column(schema.SEQ_PIN_ID), seq_len, np.int64),
            pad_lists(table.column(schema.SEQ_ACTION), seq_len, np.int64),
            pad_lists(table.column(schema.SEQ_TS), seq_len, np.int64),
        )

    def positions(self, keys: np.ndarray, where: str) -> np.ndarray:
        return _positions(self.keys, keys, where)


def _empty_sequences() -> pa.Table:
    return pa.table({
        schema.SEQUENCE_KEY: pa.array([], pa.int64()), "user_id": pa.array([], pa.int64()), "ts": pa.array([], pa.int64()),
        schema.SEQ_PIN_ID: pa.array([], pa.list_(pa.int64())), schema.SEQ_ACTION: pa.array([], pa.list_(pa.int32())),
        schema.SEQ_TS: pa.array([], pa.list_(pa.int64())),
    })


# --------------------------------------------------------------------------- the per-impression view
def _pin_embedding_column(pin_id: np.ndarray, pin_ids: np.ndarray, embeddings: np.ndarray) -> pa.Array:
    """Each row's content embedding by pin id (zeros for a pin the table lacks, as online)."""
    values = np.zeros((len(pin_id), embeddings.shape[1] if embeddings.ndim == 2 else schema.EMBEDDING_DIM), np.float32)
    if len(pin_ids):
        order = np.argsort(pin_ids)
        at = np.minimum(np.searchsorted(pin_ids[order], pin_id), len(pin_ids) - 1)
        known = pin_ids[order][at] == pin_id
        values[known] = embeddings[order[at[known]]]
    return list_column(values)


def read_instances(
    instances_dir: str | Path, split: str, columns: tuple[str, ...] | None = None, buckets: tuple[int, ...] | None = None
) -> pa.Table:
    """One split as one row per impression: the ``rows`` columns (or ``columns`` of them), the
    three ``seq_*`` list columns joined back from ``sequences`` and ``pin_embedding`` from the pin
    table. Reads bucket by bucket; the result is whole in memory, so it is for tools, tests and
    evaluation-sized splits, not for training (that is :class:`InstanceStream`). ``buckets``
    reads only those user buckets."""
    root = instances_root(instances_dir)
    pin_ids, embeddings = read_pin_features(root)
    sequence_files = bucket_files(root, split, schema.SEQUENCES_DIR)
    parts = []
    for bucket, files in bucket_files(root, split).items():
        if buckets is not None and bucket not in buckets:
            continue
        from_rows = [c for c in (columns or schema.ROW_COLUMNS) if c not in (*schema.SEQUENCE_COLUMNS, schema.PIN_EMBEDDING)]
        rows = _read(files, tuple(dict.fromkeys([*from_rows, schema.SEQUENCE_KEY, "pin_id"])))
        sequences = _sorted_sequences(sequence_files.get(bucket, []))
        at = _positions(sequences.column(schema.SEQUENCE_KEY).to_numpy(), rows.column(schema.SEQUENCE_KEY).to_numpy(),
                        f"instances at {root}, split {split}, bucket {bucket}")
        joined = sequences.select(list(schema.SEQUENCE_COLUMNS)).take(pa.array(at))
        for name in schema.SEQUENCE_COLUMNS:
            rows = rows.append_column(name, joined.column(name))
        rows = rows.append_column(schema.PIN_EMBEDDING, _pin_embedding_column(rows.column("pin_id").to_numpy(), pin_ids, embeddings))
        parts.append(rows)
    if not parts:
        raise storage.StorageError(f"instances at {root} have no rows in split {split!r} and buckets {buckets}")
    table = pa.concat_tables(parts)
    if columns:
        wanted = [c for c in table.column_names if c in columns or c in (*schema.SEQUENCE_COLUMNS, schema.PIN_EMBEDDING)]
        table = table.select(wanted)
    return table


def with_request_sequences(table: pa.Table) -> pa.Table:
    """Every row's ``seq_*`` replaced by its request's first row's (earliest ``ts``, then the row
    order): the request's candidates scored with one sequence, as of the request's start.

    A feed request's candidates share one sequence. Requests that group exposures shown at
    different times (KuaiRand's user-days) carry each row's own, and within such a request a
    row's sequence holds the actions of the request's earlier rows: conditioning on a request
    with a positive makes "acted earlier in this request" a sign of the rows *after* the action,
    so any model that reads the sequence misorders the request. The first row's sequence holds
    no action of the request, so nothing leaks, and the flat features stay per row.
    """
    if table.num_rows == 0:
        return table
    request = table.column("request_id").to_numpy(zero_copy_only=False)
    ts = table.column("ts").to_numpy()
    _, code = np.unique(request, return_inverse=True)
    order = np.lexsort((np.arange(len(ts)), ts, code))  # by request, then time, then row order
    sorted_code = code[order]
    starts = np.r_[0, np.flatnonzero(sorted_code[1:] != sorted_code[:-1]) + 1]
    first = np.empty(int(code.max()) + 1, dtype=np.int64)
    first[sorted_code[starts]] = order[starts]  # each request's earliest row
    source = pa.array(first[code])
    for name in schema.SEQUENCE_COLUMNS:
        table = table.set_column(table.schema.get_field_index(name), name, table.column(name).take(source))
    return table


# --------------------------------------------------------------------------- tensors
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


def row_tensors(table: pa.Table | pa.RecordBatch) -> dict[str, torch.Tensor]:
    """The per-row inputs of one Arrow batch (+ labels and weights when present); no sequence."""
    col = table.column
    dense = np.stack([col(f).to_numpy(zero_copy_only=False).astype(np.float32) for f in schema.DENSE_FEATURES], axis=1)
    batch = {
        "dense": torch.from_numpy(np.nan_to_num(dense)),
        "pin_id": torch.from_numpy(col("pin_id").to_numpy(zero_copy_only=False).astype(np.int64)),
        "ts": torch.from_numpy(col("ts").to_numpy(zero_copy_only=False).astype(np.int64)),
    }
    for name, size in schema.CATEGORICAL_FEATURES.items():
        values = col(name).to_numpy(zero_copy_only=False).astype(np.int64)
        batch[name] = torch.from_numpy(np.clip(values, 0, size - 1))
    if schema.LABEL_COLUMNS[0] in table.schema.names:
        labels = np.stack([col(c).to_numpy(zero_copy_only=False) for c in schema.LABEL_COLUMNS], axis=1)
        batch["labels"] = torch.from_numpy(labels.astype(np.float32))
        batch["sample_weight"] = torch.from_numpy(col(schema.SAMPLE_WEIGHT).to_numpy(zero_copy_only=False).astype(np.float32))
    return batch


def with_sequences(batch: dict[str, torch.Tensor], pin_id: np.ndarray, action: np.ndarray, ts: np.ndarray, index: np.ndarray) -> dict[str, torch.Tensor]:
    """Add the batch's unique sequences ``(U, L)`` and each row's index into them ``(B,)``."""
    batch[schema.SEQ_PIN_ID] = torch.from_numpy(np.ascontiguousarray(pin_id, dtype=np.int64))
    batch[schema.SEQ_ACTION] = torch.from_numpy(np.ascontiguousarray(action, dtype=np.int64))
    batch[schema.SEQ_TS] = torch.from_numpy(np.ascontiguousarray(ts, dtype=np.int64))
    batch[schema.SEQ_INDEX] = torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64))
    return batch


def unique_requests(user_id: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each distinct (user_id, ts), each row's index into those): one sequence per request."""
    if len(user_id) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.stack([np.asarray(user_id, np.int64), np.asarray(ts, np.int64)], axis=1)
    _, first, inverse = np.unique(pairs, axis=0, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def to_tensors(table: pa.Table | pa.RecordBatch, seq_len: int = schema.SEQ_LEN) -> dict[str, torch.Tensor]:
    """A per-impression Arrow batch (``seq_*`` list columns on every row) → the ranker's
    request-level input: each (user_id, ts)'s sequence padded once."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    first, index = unique_requests(table.column("user_id").to_numpy(), table.column("ts").to_numpy())
    firsts = table.select(list(schema.SEQUENCE_COLUMNS)).take(pa.array(first))
    return with_sequences(
        row_tensors(table),
        pad_lists(firsts.column(schema.SEQ_PIN_ID), seq_len, np.int64),
        pad_lists(firsts.column(schema.SEQ_ACTION), seq_len, np.int64),
        pad_lists(firsts.column(schema.SEQ_TS), seq_len, np.int64),
        index,
    )


# --------------------------------------------------------------------------- the training stream
@dataclass
class InstanceStream(IterableDataset):
    """Request-level batches of one split for one rank, read bucket by bucket."""

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
    shuffle_unit: str = "row"

    def __post_init__(self) -> None:
        super().__init__()
        if self.shuffle_unit not in ("request", "row"):
            raise ValueError(f"shuffle_unit must be 'request' or 'row', not {self.shuffle_unit!r}")
        self.row_files = bucket_files(self.instances_dir, self.split)
        self.sequence_files = bucket_files(self.instances_dir, self.split, schema.SEQUENCES_DIR)
        self.rows = split_rows([f for files in self.row_files.values() for f in files])
        self.epoch = 0

    def batches_per_rank(self) -> int:
        if self.drop_remainder:
            return self.rows // (self.batch_size * self.world_size)
        return -(-self.rows // (self.batch_size * self.world_size))

    def _row_tables(self, rng: np.random.Generator) -> Iterator[pa.Table]:
        """Rows with a ``bucket`` column, shuffled within a buffer when asked."""
        buckets = list(self.row_files)
        if self.shuffle:
            rng.shuffle(buckets)
        for bucket in buckets:
            buffer: list[pa.RecordBatch] = []
            for path in self.row_files[bucket]:
                for record_batch in pq.ParquetFile(path).iter_batches(batch_size=self.batch_size, columns=list(ROW_INPUT_COLUMNS)):
                    buffer.append(record_batch.append_column(schema.BUCKET, pa.array(np.full(record_batch.num_rows, bucket, np.int32))))
                    if len(buffer) >= self.shuffle_buffer_batches:
                        yield from self._drain(buffer, rng)
                        buffer = []
            if buffer:
                yield from self._drain(buffer, rng)

    def _drain(self, buffer: list[pa.RecordBatch], rng: np.random.Generator) -> Iterator[pa.Table]:
        table = pa.Table.from_batches(buffer)
        if self.shuffle:
            table = table.take(pa.array(self._permutation(table.column(schema.SEQUENCE_KEY).to_numpy(), rng)))
        for start in range(0, table.num_rows, self.batch_size):
            yield table.slice(start, self.batch_size)

    def _permutation(self, keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Rows in random order, or requests in random order with each request's rows together
        (rows are stored by user and time, so a request's rows are adjacent)."""
        if self.shuffle_unit == "row" or len(keys) == 0:
            return rng.permutation(len(keys))
        request = np.concatenate([[0], np.cumsum(keys[1:] != keys[:-1])])  # (N,) request number
        request_rank = rng.permutation(request[-1] + 1)
        return np.argsort(request_rank[request], kind="stable")

    def _sequences(self, bucket: int, cache: dict[int, BucketSequences]) -> BucketSequences:
        if bucket not in cache:
            # Buckets are read one after another and a batch spans at most two (the end of one,
            # the start of the next), so the oldest loaded bucket is the one to let go.
            while len(cache) >= 2:
                cache.pop(next(iter(cache)))
            cache[bucket] = BucketSequences.load(self.sequence_files.get(bucket, []), self.seq_len)
        return cache[bucket]

    def _to_batch(self, table: pa.Table, cache: dict[int, BucketSequences]) -> dict[str, torch.Tensor]:
        keys = table.column(schema.SEQUENCE_KEY).to_numpy()
        unique_keys, first, index = np.unique(keys, return_index=True, return_inverse=True)
        key_buckets = table.column(schema.BUCKET).to_numpy()[first]
        pin_id = np.zeros((len(unique_keys), self.seq_len), np.int64)
        action, ts = np.zeros_like(pin_id), np.zeros_like(pin_id)
        for bucket in np.unique(key_buckets):
            mine = key_buckets == bucket
            sequences = self._sequences(int(bucket), cache)
            at = sequences.positions(unique_keys[mine], f"instances at {self.instances_dir}, split {self.split}, bucket {bucket}")
            pin_id[mine], action[mine], ts[mine] = sequences.pin_id[at], sequences.action[at], sequences.ts[at]
        return with_sequences(row_tensors(table), pin_id, action, ts, index.reshape(-1))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        limit = self.batches_per_rank()
        produced = 0
        pending: pa.Table | None = None
        index = 0
        cache: dict[int, BucketSequences] = {}
        for table in self._row_tables(rng):
            pending = table if pending is None else pa.concat_tables([pending, table])
            while pending.num_rows >= self.batch_size:
                full, pending = pending.slice(0, self.batch_size), pending.slice(self.batch_size)
                if index % self.world_size == self.rank:
                    if produced >= limit:
                        return
                    produced += 1
                    yield self._to_batch(full, cache)
                index += 1
        if pending is not None and pending.num_rows and not self.drop_remainder and index % self.world_size == self.rank and produced < limit:
            yield self._to_batch(pending, cache)


# --------------------------------------------------------------------------- a published dataset
@dataclass(frozen=True)
class InstanceDataset:
    """A published instance dataset: where it is, its manifest, and the ways to read it. Stages
    hand its path over through the run directory; whoever reads it opens it here, once."""

    path: str
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> "InstanceDataset":
        storage.require_published(path, "instances")
        return cls(str(path), storage.read_manifest(path))

    @classmethod
    def of(cls, dataset: "InstanceDataset | str | Path") -> "InstanceDataset":
        return dataset if isinstance(dataset, cls) else cls.open(dataset)

    @property
    def fingerprint(self) -> str | None:
        return self.manifest.get("fingerprint")

    @property
    def window(self) -> str:
        return f"{self.manifest['window']['start']}..{self.manifest['window']['end']}"

    def label_rates(self, split: str) -> dict[str, float]:
        return self.manifest["splits"][split]["label_rates"]

    def read(self, split: str, columns: tuple[str, ...] | None = None) -> pa.Table:
        return read_instances(self.path, split, columns)

    def stream(self, split: str, batch_size: int, **kwargs) -> "InstanceStream":
        return InstanceStream(self.path, split, batch_size, **kwargs)

    def pin_features(self) -> tuple[np.ndarray, np.ndarray]:
        return read_pin_features(self.path)
