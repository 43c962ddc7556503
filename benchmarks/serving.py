"""Ranking latency: 500 candidates × a 100-action sequence, side by side in one run.

Variants, each timed over the same requests:

- ``per-candidate loop``: the straightforward service: features and one model call per candidate;
- ``batched``: ``RankingService.rank``, the platform's path: the request's history is read
  once, features for all candidates are built as one Arrow table, one model call in which the
  history is one sequence shared by all candidates (U = 1, B = 500);
- ``batched, per-row seq``: the same with the history copied to every candidate (U = B = 500),
  the computation before sequences were request-level;
- ``batched + HTTP``: the same through the FastAPI app (JSON in and out; in-process ASGI client).

Models: TransAct v1.1 at the paper's sizes (d_model 96, 2 layers, 2 heads, ff 32, seq 100)
and at the platform's default training sizes (``train.*`` in the default config). Random
weights: latency does not depend on them. Prints p50 / p99 latency, requests/s, candidates/s
and peak resident memory; then the request's FLOPs (counted by torch's FlopCounterMode) and the
machine's fp32 matmul floor: the median time of one square matmul of the same FLOPs, measured
in the same run with the same threads.

The ``stores`` section ranks the same requests with the history read from each sequence store
(in-process dict, the embedded SQLite file, a Redis server started on loopback for the run):
p50/p99 of the whole request and of the store read inside it, the bulk load rate of the
bootstrap (``load``-style ``extend``) and the rate of single ``/events``-style appends.

    .venv/bin/python benchmarks/serving.py [--candidates 500] [--requests 30] [--threads 2]
    .venv/bin/python benchmarks/serving.py --sections stores --stores memory,sqlite,redis
    .venv/bin/python benchmarks/serving.py --device cuda        # on a GPU machine
    .venv/bin/python benchmarks/serving.py --sections transact  # issue 34: TransAct's paths and references

The ``transact`` section scores the same requests' feature tables (built once, by the service's
own feature path) with each variant of the model call, interleaved request by request: the
per-row first layer (the path before issue 34), the per-sequence first layer eager and compiled
(as ``serving.compile`` does), the plain reference (``benchmarks/reference_transact.py``, one
sequence per candidate, as the official design computes it), and the same-FLOP matmul floor.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from homefeed import features, schema  # noqa: E402
from homefeed.config import load_config  # noqa: E402
from homefeed.serving.service import RankingService, ServedModel  # noqa: E402
from models.ranker import Ranker, RankerConfig  # noqa: E402
from models.sequence import SequenceConfig  # noqa: E402
from models.zoo import NeuralScorer  # noqa: E402

NUM_PINS = 100_000
NUM_USERS = 1_000
REQUEST_TS = 1_800_000_000_000


def synthetic_snapshot(rng: np.random.Generator) -> features.FeatureSnapshot:
    pins = {
        p: {"pin_id": p, "embedding": rng.standard_normal(schema.EMBEDDING_DIM).astype(np.float32).tolist(),
            "created_ts": REQUEST_TS - int(rng.integers(1, 10**9)), "category": int(rng.integers(0, 32)), "owner_id": int(rng.integers(1, 5000)),
            "repin_count": int(rng.integers(0, 1000)), "click_count": int(rng.integers(0, 1000)),
            "impression_count": int(rng.integers(0, 10**5)), "spam_score": float(rng.random())}
        for p in range(1, NUM_PINS + 1)
    }
    users = {
        u: {"user_id": u, "signup_ts": REQUEST_TS - 10**10, "last_active_ts": REQUEST_TS, "board_count": 10,
            "follower_count": 100, "pin_count": 50, "actions_28d": 40, "gender": "female", "country": "US"}
        for u in range(1, NUM_USERS + 1)
    }
    return features.FeatureSnapshot(pins, users)


def histories(rng: np.random.Generator) -> list[tuple[int, features.Event]]:
    """100 actions per user, a minute to two before the requests."""
    return [(user, features.make_event(SNAPSHOT_HOLDER[0], int(rng.integers(1, NUM_PINS)), schema.ACTION_NAMES[int(rng.integers(0, 6))],
                                        REQUEST_TS - 60_000 - 1000 * i))
            for user in range(1, NUM_USERS + 1) for i in range(100)]


SNAPSHOT_HOLDER: list[features.FeatureSnapshot] = []


def service_for(sizes: str, snapshot: features.FeatureSnapshot, device: torch.device, rng: np.random.Generator) -> RankingService:
    if sizes == "paper":  # the model's own overrides (TransAct v1.1's DCN layers) come from models.catalog
        ranker_cfg = RankerConfig(sequence_module="transact_v11", id_dim=32,
                                  sequence=SequenceConfig(seq_len=100, action_dim=32, d_model=96, num_layers=2, num_heads=2, dim_feedforward=32))
    else:
        ranker_cfg = RankerConfig.from_train(load_config(environ={}).train.model_copy(update={"model": "transact_v11"}))
    content = torch.zeros(NUM_PINS + 1, schema.EMBEDDING_DIM)
    for p, pin in snapshot.pins.items():
        content[p] = torch.tensor(pin["embedding"])
    ranker = Ranker(ranker_cfg, content).to(device).eval()
    scorer = NeuralScorer("transact_v11", ranker, batch_size=4096)
    stats = {f: {"mean": 1.0, "std": 2.0} for f in schema.DENSE_FEATURES}
    model = ServedModel("bench", scorer, {"repin": 1.0, "hide": -2.0}, stats, 30_000, 100, "", 0.0, "bench")
    store = features.InMemorySequenceStore(snapshot)
    store.extend(histories(rng))
    return RankingService(model, snapshot, store)


def requests(n: int, candidates: int, rng: np.random.Generator) -> list[tuple[int, list[features.Candidate]]]:
    out = []
    for _ in range(n):
        pins = rng.integers(1, NUM_PINS, size=candidates)
        out.append((int(rng.integers(1, NUM_USERS)), [features.Candidate(int(p), REQUEST_TS - 1000 * i, "pfy") for i, p in enumerate(pins)]))
    return out


class PerRowScorer(NeuralScorer):
    """The per-impression computation: every candidate with its own copy of the history."""

    def predict(self, table):
        from benchmarks.request_level import expand
        from homefeed.data import to_tensors

        batch = expand(to_tensors(table, self.ranker.cfg.sequence.seq_len))
        with torch.inference_mode():
            return torch.sigmoid(self.ranker(batch).float()).numpy()


def request_flops(service: RankingService, user: int, candidates: list[features.Candidate]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    # Counted on the plain (training-mode) path: the fused inference kernel of
    # nn.TransformerEncoderLayer is invisible to the counter. No gradients, so no backward FLOPs.
    ranker = service.model.scorer.ranker
    counter = FlopCounterMode(display=False)
    try:
        ranker.train()
        with counter, torch.no_grad():
            service.rank(user, REQUEST_TS, candidates)
    finally:
        ranker.eval()
    return counter.get_total_flops()


def matmul_floor_ms(flops: int, repeats: int = 30) -> float:
    """Median ms of one fp32 square matmul with ``flops`` (2·n³) floating-point operations."""
    n = max(int(round((flops / 2) ** (1 / 3))), 1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def per_candidate_loop(service: RankingService, user: int, candidates: list[features.Candidate]) -> list[int]:
    scores = [float(service.score(user, REQUEST_TS, [c])[1][0]) for c in candidates]
    return sorted(range(len(candidates)), key=lambda i: -scores[i])


def time_variant(call, workload, warmup: int = 2) -> list[float]:
    for user, cands in workload[:warmup]:
        call(user, cands)
    latencies = []
    for user, cands in workload:
        started = time.perf_counter()
        call(user, cands)
        latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--loop-requests", type=int, default=3, help="the per-candidate loop is slow; fewer requests")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="paper,default")
    parser.add_argument("--sections", default="latency,stores")
    parser.add_argument("--stores", default="memory,sqlite,redis")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    snapshot = synthetic_snapshot(rng)
    SNAPSHOT_HOLDER.append(snapshot)
    workload = requests(args.requests, args.candidates, rng)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"Ranking {args.candidates} candidates with a 100-action sequence, TransAct v1.1, on {where}, torch {torch.__version__}")
    if "latency" in args.sections:
        latency_section(args, snapshot, workload, device, rng)
    if "stores" in args.sections:
        stores_section(args, snapshot, workload, device, rng)
    if "transact" in args.sections:
        transact_section(args, snapshot, workload, device, rng)


def transact_section(args, snapshot, workload, device, rng) -> None:
    """Issue 34: the model call of a 500-candidate request, per variant, on the same tables."""
    import copy

    from benchmarks.reference_transact import ReferenceTransAct
    from benchmarks.request_level import expand
    from homefeed.data import to_tensors
    from models.compilation import compile_sequence_module

    print(f"\nTransAct v1.1 model call, {args.candidates} candidates × 100 actions, {len(workload)} requests, interleaved")
    print(f"| {'model sizes':<12} | {'variant':<30} | {'p50 ms':>8} | {'p99 ms':>8} | {'vs per-row p99':>14} |")
    print(f"|{'-' * 14}|{'-' * 32}|{'-' * 10}|{'-' * 10}|{'-' * 16}|")
    for sizes in args.sizes.split(","):
        service = service_for(sizes, snapshot, device, rng)
        model = service.model
        tables = [features.instance_table(features.raw_rows(snapshot, service.store.history(user), user, REQUEST_TS, cands,
                                                           model.delay_ms, model.seq_len), model.feature_stats)
                  for user, cands in workload]
        ranker = model.scorer.ranker
        per_row_ranker = copy.deepcopy(ranker)
        per_row_ranker.sequence.first_layer_per_sequence = False
        compiled = {}
        for kernel in ("sdpa", "logits"):  # each forced, to show both; serving.compile measures and keeps the fastest
            compiled[kernel] = copy.deepcopy(ranker)
            compiled[kernel].sequence.attention_kernel = kernel
            outcome = compile_sequence_module(compiled[kernel], None, measure=False)
            print(f"  ({sizes}) {outcome.describe(f'per-sequence first layer, {kernel}')}")
            if not outcome.compiled:
                del compiled[kernel]
        reference = ReferenceTransAct(ranker.pins.content.cpu(), ranker.cfg.sequence, id_dim=ranker.cfg.id_dim).to(device).eval()
        seq_len = ranker.cfg.sequence.seq_len

        def call(network, per_row_batch=False):
            def run(table):
                batch = {k: v.to(device) for k, v in to_tensors(table, seq_len).items()}
                return network(expand(batch) if per_row_batch else batch)
            return run

        variants = {"per-row first layer (before)": call(per_row_ranker), "per-sequence first layer": call(ranker),
                    **{f"per-sequence, compiled {kernel}": call(network) for kernel, network in compiled.items()},
                    "reference (plain, per row)": call(reference, per_row_batch=True)}
        latencies = {name: [] for name in variants}
        with torch.inference_mode():
            for name, run in variants.items():
                run(tables[0])  # warm
            for table in tables:
                for name, run in variants.items():
                    started = time.perf_counter()
                    run(table)
                    latencies[name].append(time.perf_counter() - started)
        before = float(np.percentile(latencies["per-row first layer (before)"], 99))
        for name, values in latencies.items():
            p50, p99 = statistics.median(values), float(np.percentile(values, 99))
            print(f"| {sizes:<12} | {name:<30} | {1000 * p50:>8.1f} | {1000 * p99:>8.1f} | {p99 / before:>13.2f}x |", flush=True)
        if device.type == "cpu":
            flops = request_flops(service, *workload[0])
            print(f"| {sizes:<12} | {'same-FLOP matmul floor':<30} | {matmul_floor_ms(flops):>8.1f} | {'':>8} | {'':>14} |")


def latency_section(args, snapshot, workload, device, rng) -> None:
    print(f"| {'model sizes':<12} | {'variant':<20} | {'requests':>8} | {'p50 ms':>8} | {'p99 ms':>8} | {'req/s':>7} | {'cand/s':>9} | {'peak RSS MiB':>12} |")
    print(f"|{'-' * 14}|{'-' * 22}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 9}|{'-' * 11}|{'-' * 14}|")
    floors = []
    for sizes in args.sizes.split(","):
        service = service_for(sizes, snapshot, device, rng)
        app_client = _http_client(service)
        per_row = RankingService(
            ServedModel(**{**service.model.__dict__, "scorer": PerRowScorer("transact_v11", service.model.scorer.ranker)}),
            service.snapshot, service.store,
        )
        variants = {
            "per-candidate loop": (lambda u, c: per_candidate_loop(service, u, c), workload[: args.loop_requests]),
            "batched": (lambda u, c: service.rank(u, REQUEST_TS, c), workload),
            "batched, per-row seq": (lambda u, c: per_row.rank(u, REQUEST_TS, c), workload),
            "batched + HTTP": (lambda u, c: _post(app_client, u, c), workload),
        }
        if device.type == "cpu":
            flops = request_flops(service, *workload[0])
            floors.append((sizes, flops, matmul_floor_ms(flops)))
        for name, (call, work) in variants.items():
            with torch.inference_mode():
                latencies = time_variant(call, work, warmup=1 if name == "per-candidate loop" else 2)
            p50, p99 = statistics.median(latencies), float(np.percentile(latencies, 99))
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"| {sizes:<12} | {name:<20} | {len(work):>8} | {1000 * p50:>8.1f} | {1000 * p99:>8.1f} | {1 / p50:>7.1f} | "
                  f"{args.candidates / p50:>9,.0f} | {rss:>12,.0f} |", flush=True)
    for sizes, flops, floor in floors:
        print(f"{sizes} sizes: a request is {flops / 1e9:.2f} GFLOP (batched path); a same-FLOP fp32 matmul takes {floor:.1f} ms here")


def _open_stores(names: list[str], snapshot, directory: Path):
    """Each named store, empty; the Redis server is started here and returned to be stopped."""
    from homefeed.local_redis import RedisServer
    from homefeed.sequence_store import RedisSequenceStore, SqliteSequenceStore

    stores, server = {}, None
    for name in names:
        if name == "memory":
            stores[name] = features.InMemorySequenceStore(snapshot)
        elif name == "sqlite":
            stores[name] = SqliteSequenceStore(directory / "sequences.sqlite", snapshot)
        elif name == "redis":
            server = RedisServer(directory / "redis").start()
            stores[name] = RedisSequenceStore(server.url, snapshot)
        else:
            raise SystemExit(f"unknown store {name!r}: memory, sqlite, redis")
    return stores, server


def stores_section(args, snapshot, workload, device, rng) -> None:
    """The same requests and model, the history read from each store."""
    import tempfile

    events = histories(rng)
    service = service_for("default", snapshot, device, rng)
    with tempfile.TemporaryDirectory() as tmp:
        stores, server = _open_stores(args.stores.split(","), snapshot, Path(tmp))
        try:
            print(f"\nSequence stores: {len(workload)} requests of {args.candidates} candidates (default sizes), "
                  f"{NUM_USERS} users × 100 actions")
            print(f"| {'store':<8} | {'rank p50 ms':>11} | {'rank p99 ms':>11} | {'read p50 ms':>11} | {'read p99 ms':>11} | "
                  f"{'bulk load ev/s':>14} | {'appends ev/s':>12} |")
            print(f"|{'-' * 10}|{'-' * 13}|{'-' * 13}|{'-' * 13}|{'-' * 13}|{'-' * 16}|{'-' * 14}|")
            for name, store in stores.items():
                started = time.perf_counter()
                for at in range(0, len(events), 10_000):
                    store.extend(events[at : at + 10_000])
                bulk_rate = len(events) / (time.perf_counter() - started)
                on_store = RankingService(service.model, snapshot, store)
                rankings = []
                with torch.inference_mode():
                    latencies = time_variant(lambda u, c: rankings.append(on_store.rank(u, REQUEST_TS, c)), workload)
                reads = [r.store_read_s for r in rankings[-len(workload):]]
                assert all(r.sequence_length == 100 for r in rankings), "every user has 100 actions before the requests"
                singles = 3000
                started = time.perf_counter()
                for i in range(singles):
                    store.append(NUM_USERS + 1 + i % 500, 1 + i, "click", REQUEST_TS - i)
                append_rate = singles / (time.perf_counter() - started)
                print(f"| {name:<8} | {1000 * statistics.median(latencies):>11.1f} | {1000 * float(np.percentile(latencies, 99)):>11.1f} | "
                      f"{1000 * statistics.median(reads):>11.3f} | {1000 * float(np.percentile(reads, 99)):>11.3f} | "
                      f"{bulk_rate:>14,.0f} | {append_rate:>12,.0f} |", flush=True)
        finally:
            for store in stores.values():
                store.close()
            if server:
                server.stop()


def _http_client(service: RankingService):
    from fastapi.testclient import TestClient

    from homefeed.serving.app import create_app

    cfg = load_config(environ={}, overrides={"serving": {"reload_poll_s": 0}})
    return TestClient(create_app(cfg, service))


def _post(client, user: int, candidates: list[features.Candidate]) -> dict:
    body = {"user_id": user, "request_ts": REQUEST_TS, "candidates": [{"pin_id": c.pin_id, "ts": c.ts, "source": c.source} for c in candidates]}
    answer = client.post("/rank", json=body)
    answer.raise_for_status()
    return answer.json()


if __name__ == "__main__":
    main()
