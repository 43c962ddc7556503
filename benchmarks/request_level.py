"""Request-level sequences vs one copy per impression: the loader and training, side by side.

On a published instance dataset (e.g. the 2M-impression simulation), in one run:

- ``loader``: batches/s of the training stream (batch 4,096, shuffled as training does):
  ``request`` is :class:`homefeed.data.InstanceStream` on the ``rows`` + ``sequences`` tables
  (each batch carries its U distinct sequences once, shuffled by row (the default) or by request);
  ``per-impression`` is the loader as it was before: the same train split written the old way
  (every row with its own ``seq_*`` lists and ``pin_embedding``, one Parquet file per bucket),
  read record batch by record batch, shuffled by row, every row's lists padded to (B, L).
- ``train``: examples/s of a training step (forward, weighted BCE, backward, AdamW) on the same
  real batches, for ``none``, ``avgpool``, ``lstm`` and ``transact_v11`` at the default and the
  paper's sizes: ``request`` feeds (U, L) + ``seq_index``; ``per-impression`` feeds the same
  batch with every row's sequence expanded to (B, L), which is what the models computed before.

    .venv/bin/python benchmarks/request_level.py --instances DIR [--what loader,train] [--threads 2]

Medians; the per-impression files are written once into a temporary directory first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from homefeed import schema  # noqa: E402
from homefeed.config import load_config  # noqa: E402
from homefeed.data import InstanceStream, bucket_files, pad_lists, read_instances, read_pin_features, row_tensors  # noqa: E402
from models.ranker import Ranker, RankerConfig, pin_content_table, weighted_bce  # noqa: E402
from models.sequence import SequenceConfig  # noqa: E402

PAPER = SequenceConfig(seq_len=100, action_dim=32, d_model=96, num_layers=2, num_heads=2, dim_feedforward=32, dropout=0.1)
MODELS = ("none", "avgpool", "lstm", "transact_v11")


# --------------------------------------------------------------------------- the old layout, for comparison only
def write_per_impression(instances: str, split: str, out: Path) -> list[Path]:
    """The split as the job wrote it before: one row per impression with its own sequence copy."""
    files = []
    for bucket in bucket_files(instances, split):
        # One bucket at a time keeps memory at one bucket's joined rows.
        table = read_instances(instances, split, buckets=(bucket,))
        path = out / f"part-{bucket:05d}.parquet"
        pq.write_table(table, path)
        files.append(path)
    return files


def per_impression_batches(files: list[Path], batch_size: int, seq_len: int, seed: int, buffer_batches: int = 8) -> Iterator[dict]:
    """The old loader: shuffle rows within a buffer, pad every row's lists to (B, L)."""
    rng = np.random.default_rng(seed)
    columns = [c for c in pq.ParquetFile(files[0]).schema_arrow.names if c != schema.PIN_EMBEDDING]
    order = list(files)
    rng.shuffle(order)
    buffer: list[pa.RecordBatch] = []

    def drain(buffered):
        table = pa.Table.from_batches(buffered)
        table = table.take(pa.array(rng.permutation(table.num_rows)))
        for start in range(0, table.num_rows, batch_size):
            part = table.slice(start, batch_size)
            batch = row_tensors(part)
            for name in schema.SEQUENCE_COLUMNS:
                batch[name] = torch.from_numpy(pad_lists(part.column(name), seq_len, np.int64))
            yield batch

    for path in order:
        for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
            buffer.append(record_batch)
            if len(buffer) >= buffer_batches:
                yield from drain(buffer)
                buffer = []
    if buffer:
        yield from drain(buffer)


def expand(batch: dict) -> dict:
    """A request-level batch as one sequence per row (the per-impression computation)."""
    out = dict(batch)
    index = out.pop(schema.SEQ_INDEX)
    for name in schema.SEQUENCE_COLUMNS:
        out[name] = batch[name][index]
    return out


# --------------------------------------------------------------------------- measurements
def time_loader(make_iter, max_batches: int) -> tuple[float, int, float]:
    """(batches/s, batches, mean U/B) over up to ``max_batches`` batches."""
    started, n, ratio = time.perf_counter(), 0, []
    for batch in make_iter():
        n += 1
        rows = len(batch["pin_id"])
        ratio.append(batch[schema.SEQ_PIN_ID].shape[0] / rows)
        if n >= max_batches:
            break
    return n / (time.perf_counter() - started), n, float(np.mean(ratio))


def ranker(name: str, sizes: str, instances: str) -> Ranker:
    if sizes == "paper":  # the model's own overrides (TransAct v1.1's DCN layers) come from models.catalog
        cfg = RankerConfig(sequence_module=name, sequence=PAPER, id_dim=32)
    else:
        cfg = RankerConfig.from_train(load_config(environ={}).train.model_copy(update={"model": name}))
    ids, embeddings = read_pin_features(instances)
    return Ranker(cfg, pin_content_table(ids, embeddings))


def time_training(model: Ranker, batches: list[dict], warmup: int) -> float:
    """examples/s, median over the timed steps."""
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    heads = torch.ones(len(schema.HEADS))
    times, sizes = [], []
    for step, batch in enumerate(batches):
        batch = dict(batch)
        labels, weights = batch.pop("labels"), batch.pop("sample_weight")
        started = time.perf_counter()
        loss = weighted_bce(model(batch), labels, weights, heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - started)
            sizes.append(len(labels))
    return statistics.median(s / t for s, t in zip(sizes, times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", required=True)
    parser.add_argument("--what", default="loader,train")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loader-batch", type=int, default=4096)
    parser.add_argument("--loader-batches", type=int, default=10**9, help="cap per loader measurement (default: one epoch)")
    parser.add_argument("--train-batch", type=int, default=0, help="default: train.batch_size of the default config")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default="default,paper")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    what = args.what.split(",")
    print(f"instances: {args.instances}; CPU, {args.threads} threads, torch {torch.__version__}")
    if "loader" in what:
        with tempfile.TemporaryDirectory(prefix="homefeed-per-impression-") as scratch:
            started = time.perf_counter()
            files = write_per_impression(args.instances, "train", Path(scratch))
            print(f"(per-impression copy of the train split written in {time.perf_counter() - started:.0f} s, "
                  f"{sum(f.stat().st_size for f in files) / 2**20:.0f} MiB)")
            variants = {
                "request (shuffled by request)": lambda: iter(InstanceStream(args.instances, "train", args.loader_batch, shuffle=True, seed=1, shuffle_unit="request")),
                "request (shuffled by row)": lambda: iter(InstanceStream(args.instances, "train", args.loader_batch, shuffle=True, seed=1, shuffle_unit="row")),
                "per-impression (shuffled by row)": lambda: per_impression_batches(files, args.loader_batch, schema.SEQ_LEN, 1),
            }
            print(f"\n| loader, batch {args.loader_batch:,} | batches | batches/s | sequences per row (U/B) | vs per-impression |")
            print("| --- | ---: | ---: | ---: | ---: |")
            results = {name: [time_loader(make, args.loader_batches) for _ in range(3)] for name, make in variants.items()}
            base = statistics.median(r[0] for r in results["per-impression (shuffled by row)"])
            for name, runs in results.items():
                rate = statistics.median(r[0] for r in runs)
                print(f"| {name} | {runs[0][1]} | {rate:.2f} | {runs[0][2]:.3f} | {rate / base:.2f}× |", flush=True)
    if "train" in what:
        batch_size = args.train_batch or load_config(environ={}).train.batch_size
        print(f"\n| training step, batch {batch_size:,} | sizes | U/B | request ex/s | per-impression ex/s | speed-up |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for unit in ("request", "row"):
            stream = InstanceStream(args.instances, "train", batch_size, shuffle=True, seed=2, shuffle_unit=unit)
            batches = []
            for batch in stream:
                batches.append(batch)
                if len(batches) >= args.steps + args.warmup:
                    break
            share = float(np.mean([b[schema.SEQ_PIN_ID].shape[0] / len(b["pin_id"]) for b in batches]))
            for sizes in args.sizes.split(","):
                for name in args.models.split(","):
                    shared = time_training(ranker(name, sizes, args.instances), batches, args.warmup)
                    per_row = time_training(ranker(name, sizes, args.instances), [expand(b) for b in batches], args.warmup)
                    print(f"| {name} (shuffled by {unit}) | {sizes} | {share:.3f} | {shared:,.0f} | {per_row:,.0f} | {shared / per_row:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
