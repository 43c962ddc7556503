"""Training throughput of TransAct v1.1, side by side in one run.

Compares, on the same synthetic batches:
- ``reference``: a straightforward implementation of the same architecture (nn.TransformerEncoder,
  fp32, eager, no tricks), in ``benchmarks/reference_transact.py`` (one sequence per row);
- ``per-row layer``: the platform's ranker with its first encoder layer computed per candidate
  (the path before issue 34), eager fp32;
- ``homefeed``: the platform's ranker, its first layer's attention projections per sequence;
- ``homefeed+compile``: the same with its sequence module compiled as ``train.compile`` does
  (``models.compilation``);
- ``homefeed+bf16`` / ``homefeed+bf16+compile`` (GPU only): bf16 autocast, as training runs on GPU.

Batches are ``by request`` (each sequence shared by the ~28 candidates of a request, as the
request shuffle feeds training) or ``by row`` (one sequence per candidate). Sizes: the paper's
(d_model 96, 2 layers) and the platform's defaults (``TrainConfig``). A step is forward +
weighted BCE + backward + AdamW. Prints examples/s (median of the timed steps), step latency and
peak memory.

    python benchmarks/train.py                        # CPU, 2 threads
    python benchmarks/train.py --sizes default --units request --batch-sizes 512,4096
    python benchmarks/train.py --device cuda --batch-sizes 12000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_transact import ReferenceTransAct  # noqa: E402
from homefeed import schema  # noqa: E402
from homefeed.config import TrainConfig  # noqa: E402
from models.compilation import compile_sequence_module  # noqa: E402
from models.ranker import Ranker, RankerConfig, weighted_bce  # noqa: E402
from models.sequence import SequenceConfig  # noqa: E402

PAPER = SequenceConfig(seq_len=100, action_dim=32, d_model=96, num_layers=2, num_heads=2, dim_feedforward=32, dropout=0.1)
NUM_PINS = 100_000
CANDIDATES_PER_REQUEST = 28  # the simulator's mean; a request's candidates share its sequence


def synthetic_batch(batch_size: int, device: torch.device, unit: str = "row", seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sequences = batch_size if unit == "row" else -(-batch_size // CANDIDATES_PER_REQUEST)
    length = torch.randint(0, PAPER.seq_len + 1, (sequences,), generator=g)
    valid = torch.arange(PAPER.seq_len).unsqueeze(0) < length.unsqueeze(1)
    batch = {
        "dense": torch.randn(batch_size, len(schema.DENSE_FEATURES), generator=g),
        "pin_id": torch.randint(1, NUM_PINS, (batch_size,), generator=g),
        "ts": torch.full((batch_size,), 10**12),
        schema.SEQ_PIN_ID: torch.randint(1, NUM_PINS, (sequences, PAPER.seq_len), generator=g) * valid,
        schema.SEQ_ACTION: torch.randint(1, schema.NUM_ACTION_CODES, (sequences, PAPER.seq_len), generator=g) * valid,
        schema.SEQ_TS: (10**12 - torch.randint(1, 10**8, (sequences, PAPER.seq_len), generator=g)) * valid,
        "labels": (torch.rand(batch_size, len(schema.HEADS), generator=g) < 0.1).float(),
        "sample_weight": torch.ones(batch_size),
    }
    if unit == "request":  # each candidate's request: contiguous runs, as the request shuffle yields them
        batch[schema.SEQ_INDEX] = torch.arange(batch_size) // CANDIDATES_PER_REQUEST
    for name, size in schema.CATEGORICAL_FEATURES.items():
        batch[name] = torch.randint(0, size, (batch_size,), generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def per_row(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference reads one sequence per row."""
    index = batch.get(schema.SEQ_INDEX)
    if index is None:
        return batch
    out = {k: v for k, v in batch.items() if k != schema.SEQ_INDEX}
    for name in (schema.SEQ_PIN_ID, schema.SEQ_ACTION, schema.SEQ_TS):
        out[name] = batch[name][index]
    return out


def build(variant: str, sizes: str, device: torch.device) -> torch.nn.Module:
    content = torch.randn(NUM_PINS, schema.EMBEDDING_DIM)
    train = TrainConfig(model="transact_v11")
    sequence = PAPER if sizes == "paper" else SequenceConfig.from_train(train)
    if variant == "reference":
        return ReferenceTransAct(content, sequence, id_dim=16 if sizes == "paper" else train.embedding_dim).to(device)
    if sizes == "paper":  # DCN layers: models.catalog
        cfg = RankerConfig(sequence_module="transact_v11", sequence=PAPER, id_dim=16)
    else:
        cfg = RankerConfig.from_train(train)
    model = Ranker(cfg, content).to(device)
    model.sequence.first_layer_per_sequence = variant != "per-row layer"
    return model


def measure(variant: str, sizes: str, unit: str, batch_size: int, device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build(variant, sizes, device).train()
    bf16 = "bf16" in variant
    if "compile" in variant:  # as train.compile does
        outcome = compile_sequence_module(model, None, training=True)
        if not outcome.compiled:
            raise SystemExit(outcome.describe(variant))
    step_model = model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    heads = torch.ones(len(schema.HEADS), device=device)
    batch = synthetic_batch(batch_size, device, unit)
    if variant == "reference":
        batch = per_row(batch)
    labels, weights = batch.pop("labels"), batch.pop("sample_weight")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = step_model(batch)
        loss = weighted_bce(logits.float(), labels, weights, heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mib()
    return {"examples_per_s": batch_size / median, "step_ms": 1000 * median, "peak_mib": peak}


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="512,4096")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default="")
    parser.add_argument("--sizes", default="default,paper")
    parser.add_argument("--units", default="request,row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = ["reference", "per-row layer", "homefeed", "homefeed+compile"]
    if device.type == "cuda":
        variants = ["reference", "per-row layer", "homefeed", "homefeed+bf16", "homefeed+bf16+compile"]
    if args.variants:
        variants = args.variants.split(",")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"TransAct v1.1 training step on {name}, torch {torch.__version__}; median of {args.steps} steps; "
          f"vs the per-row layer (the path before issue 34)")
    print(f"| {'sizes':<7} | {'batches':<7} | {'variant':<18} | {'batch':>6} | {'examples/s':>12} | {'step ms':>9} | {'peak MiB':>9} | {'vs per-row':>10} |")
    print(f"|{'-' * 9}|{'-' * 9}|{'-' * 20}|{'-' * 8}|{'-' * 14}|{'-' * 11}|{'-' * 11}|{'-' * 12}|")
    for sizes in args.sizes.split(","):
        for unit in args.units.split(","):
            for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
                results = {variant: measure(variant, sizes, unit, batch_size, device, args.steps, args.warmup) for variant in variants}
                before = results.get("per-row layer", next(iter(results.values())))["examples_per_s"]
                for variant, result in results.items():
                    print(f"| {sizes:<7} | {unit:<7} | {variant:<18} | {batch_size:>6} | {result['examples_per_s']:>12,.0f} | "
                          f"{result['step_ms']:>9.1f} | {result['peak_mib']:>9,.0f} | {result['examples_per_s'] / before:>9.2f}x |", flush=True)


if __name__ == "__main__":
    main()
