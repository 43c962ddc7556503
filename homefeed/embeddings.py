"""A published pin embedding table (``homefeed embed-pins``), as every reader sees it.

The table holds every pin of the snapshot it was learned beside: a ``learned`` vector for the pins
engaged often enough, the content vector mapped into the learned space for the rest (``content``).
The manifest keeps that map (``projection``: content vector and a bias → learned space), so a pin
the table has never seen (one created after training) falls back exactly as the job's own rare
pins do. The instance job reads it in place of the content vectors, and a registered model carries
the table it was trained with, so serving never scores a model with vectors it was not trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from homefeed import schema, storage

TABLE_FILE = "embeddings.parquet"
LEARNED, CONTENT = "learned", "content"


@dataclass(frozen=True)
class PinVectors:
    ids: np.ndarray  # (N,) int64, sorted
    vectors: np.ndarray  # (N, D) float32
    projection: np.ndarray  # (C + 1, D) float32: [content, 1] @ projection is a content vector in this space
    manifest: dict[str, Any]
    directory: str = ""  # where it was read from (a registered model's copy, for a job that rebuilds its features)

    @classmethod
    def read(cls, directory: str | Path) -> "PinVectors":
        root = storage.require_published(str(directory), "pin embeddings")
        table = pq.read_table(root / TABLE_FILE, columns=["pin_id", "embedding"])
        ids, vectors = table.column("pin_id").to_numpy(), vector_column(table)
        order = np.argsort(ids, kind="stable")
        manifest = storage.read_manifest(str(root))
        return cls(ids[order], vectors[order], np.asarray(manifest["projection"], dtype=np.float32), manifest, str(root))

    @property
    def end(self) -> date:
        """The last day whose engagement the vectors saw."""
        return date.fromisoformat(self.manifest["window"]["end"])

    def project(self, content: np.ndarray) -> np.ndarray:
        """(N, C) content vectors → (N, D) in the learned space."""
        content = np.asarray(content, dtype=np.float32).reshape(-1, self.projection.shape[0] - 1)
        return np.hstack([content, np.ones((len(content), 1), np.float32)]) @ self.projection

    def lookup(self, pin_ids: np.ndarray, content: np.ndarray) -> np.ndarray:
        """(N, D): each pin's vector from the table, or its content vector projected when the table lacks it."""
        pin_ids = np.asarray(pin_ids, dtype=np.int64)
        at = np.clip(np.searchsorted(self.ids, pin_ids), 0, max(len(self.ids) - 1, 0))
        known = (self.ids[at] == pin_ids) if len(self.ids) else np.zeros(len(pin_ids), bool)
        out = self.project(content) if (~known).any() else np.empty((len(pin_ids), self.vectors.shape[1]), np.float32)
        out[known] = self.vectors[at[known]]
        return out.astype(np.float32)


def vector_column(table: pa.Table, name: str = "embedding") -> np.ndarray:
    """A list column of equal-length vectors as an (N, D) float32 array."""
    flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(table.num_rows, -1)


def list_column(vectors: np.ndarray) -> pa.ListArray:
    """An (N, D) array as a list column of N float32 vectors (what ``vector_column`` reads back)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    offsets = pa.array(np.arange(len(vectors) + 1, dtype=np.int32) * vectors.shape[1])
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.ravel()))


def write(directory: Path, ids: list[int], vectors: list[np.ndarray], sources: list[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """The table and its manifest (which must hold ``projection``) into a staging directory; the
    manifest as written."""
    if "projection" not in manifest:
        raise ValueError("a pin embedding manifest needs its content projection")
    table = pa.table({"pin_id": pa.array(ids, pa.int64()),
                      "embedding": pa.array([np.asarray(v, np.float32).tolist() for v in vectors], pa.list_(pa.float32())),
                      "source": pa.array(sources, pa.string())})
    pq.write_table(table, directory / TABLE_FILE)
    # What "same inputs, skip" checks is still there (storage.intact_dataset).
    written = {**manifest, "files": storage.file_sizes(directory)}
    storage.write_json(directory / schema.MANIFEST, written)
    return written


def neighbourhoods(vectors: np.ndarray, k: int, queries: np.ndarray) -> np.ndarray:
    """(Q, k) indices of each query row's k nearest other rows by cosine (scikit-learn, brute force)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(vectors)
    found = index.kneighbors(vectors[queries], return_distance=False)
    # Drop each query itself (first, or wherever a tie with a duplicate put it), keep k others.
    return np.stack([[i for i in row if i != q][:k] for row, q in zip(found, queries)])


def neighbourhood_agreement(learned: np.ndarray, content: np.ndarray, category: np.ndarray, k: int = 10,
                            queries: int = 2000, seed: int = 0) -> dict[str, float]:
    """How far the learned space keeps what the content space knows, over the same pins: the share
    of a pin's k nearest learned neighbours that are among its k nearest content ones (on the
    simulator, whose content vectors are the true ones, this is how well the truth is recovered),
    the share of neighbours of the same category in each space, and both by chance."""
    n = len(learned)
    if n <= k:
        return {}
    picked = np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False)
    by_learned, by_content = neighbourhoods(learned, k, picked), neighbourhoods(content, k, picked)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(by_learned, by_content)])
    same = lambda found: float(np.mean(category[found] == category[picked][:, None]))  # noqa: E731
    shares = np.bincount(category - category.min()) / n
    return {"k": k, "queries": len(picked), "overlap_with_content": float(overlap), "overlap_by_chance": k / (n - 1),
            "same_category_learned": same(by_learned), "same_category_content": same(by_content),
            "same_category_by_chance": float((shares ** 2).sum())}
