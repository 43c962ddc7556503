"""Training throughput of TransAct v1.1 at the paper's sizes, side by side in one run.

Compares, on the same synthetic batches:
- ``reference``: a straightforward implementation of the same architecture (nn.TransformerEncoder,
  fp32, eager, no tricks), in ``benchmarks/reference_transact.py``;
- ``homefeed``: the platform's ranker, eager fp32;
- ``homefeed+compile``: the same under ``torch.compile``;
- ``homefeed+bf16`` / ``homefeed+bf16+compile`` (GPU only): bf16 autocast, as training runs on GPU.

A step is forward + weighted BCE + backward + AdamW. Prints examples/s (median of the timed
steps), step latency and peak memory.

    python benchmarks/train.py                        # CPU, 2 threads, batches 256 and 4096
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
from models.ranker import Ranker, RankerConfig, weighted_bce  # noqa: E402
from models.sequence import SequenceConfig  # noqa: E402

PAPER = SequenceConfig(seq_len=100, action_dim=32, d_model=96, num_layers=2, num_heads=2, dim_feedforward=32, dropout=0.1)
NUM_PINS = 100_000


def synthetic_batch(batch_size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(0, PAPER.seq_len + 1, (batch_size,), generator=g)
    valid = torch.arange(PAPER.seq_len).unsqueeze(0) < length.unsqueeze(1)
    batch = {
        "dense": torch.randn(batch_size, len(schema.DENSE_FEATURES), generator=g),
        "pin_id": torch.randint(1, NUM_PINS, (batch_size,), generator=g),
        "ts": torch.full((batch_size,), 10**12),
        schema.SEQ_PIN_ID: torch.randint(1, NUM_PINS, (batch_size, PAPER.seq_len), generator=g) * valid,
        schema.SEQ_ACTION: torch.randint(1, schema.NUM_ACTION_CODES, (batch_size, PAPER.seq_len), generator=g) * valid,
        schema.SEQ_TS: (10**12 - torch.randint(1, 10**8, (batch_size, PAPER.seq_len), generator=g)) * valid,
        "labels": (torch.rand(batch_size, len(schema.HEADS), generator=g) < 0.1).float(),
        "sample_weight": torch.ones(batch_size),
    }
    for name, size in schema.CATEGORICAL_FEATURES.items():
        batch[name] = torch.randint(0, size, (batch_size,), generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def build(variant: str, device: torch.device) -> torch.nn.Module:
    content = torch.randn(NUM_PINS, schema.EMBEDDING_DIM)
    if variant == "reference":
        return ReferenceTransAct(content, PAPER).to(device)
    cfg = RankerConfig(sequence_module="transact_v11", sequence=PAPER, id_dim=16)  # DCN layers: models.catalog
    return Ranker(cfg, content).to(device)


def measure(variant: str, batch_size: int, device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build(variant, device).train()
    compiled = "compile" in variant
    bf16 = "bf16" in variant
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    heads = torch.ones(len(schema.HEADS), device=device)
    batch = synthetic_batch(batch_size, device)
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
    parser.add_argument("--batch-sizes", default="256,4096")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = ["reference", "homefeed", "homefeed+compile"]
    if device.type == "cuda":
        variants = ["reference", "homefeed", "homefeed+bf16", "homefeed+bf16+compile"]
    if args.variants:
        variants = args.variants.split(",")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"TransAct v1.1 training step (seq {PAPER.seq_len}, d_model {PAPER.d_model}, {PAPER.num_layers} layers, "
          f"{PAPER.num_heads} heads, ff {PAPER.dim_feedforward}) on {name}, torch {torch.__version__}; median of {args.steps} steps")
    print(f"| {'variant':<24} | {'batch':>6} | {'examples/s':>12} | {'step ms':>9} | {'peak MiB':>9} | {'vs reference':>12} |")
    print(f"|{'-' * 26}|{'-' * 8}|{'-' * 14}|{'-' * 11}|{'-' * 11}|{'-' * 14}|")
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        baseline = None
        for variant in variants:
            result = measure(variant, batch_size, device, args.steps, args.warmup)
            baseline = baseline or result["examples_per_s"]
            print(f"| {variant:<24} | {batch_size:>6} | {result['examples_per_s']:>12,.0f} | {result['step_ms']:>9.1f} | "
                  f"{result['peak_mib']:>9,.0f} | {result['examples_per_s'] / baseline:>11.2f}x |", flush=True)


if __name__ == "__main__":
    main()
