"""Online experiments: what the exposure log costs a ranking, and how long a readout takes.

``exposure``: the same 500-candidate requests ranked by ``RankingService.rank`` (TransAct v1.1 at
the default sizes, the benchmark's in-memory store) with the exposure log off and on, interleaved
request by request so machine noise hits both alike; p50/p99 of each and the difference.

``readout``: a synthetic exposure log of ``--requests`` answered requests from ``--users`` users
over 7 days (written with pyarrow, 2 pins per answer: the readout reads the scalar columns only)
and ~3 actions per user-day, then the readout's steps timed one by one: the Spark job's
per-user and per-day tables (``jobs/experiment_readout.py``, collected to pandas) and the
statistics (``homefeed.readout.summarize``: tea-tasting with and without CUPED, SRM, power,
per day, per segment, the holdout).

    .venv/bin/python benchmarks/experiments.py --sections exposure --requests-timed 60
    .venv/bin/python benchmarks/experiments.py --sections readout --requests 10000000 --users 1000000
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from homefeed import arms, schema  # noqa: E402
from homefeed.config import load_config  # noqa: E402
from homefeed.event_log import SERVED, SERVED_SCHEMA, ExposureLog  # noqa: E402
from homefeed.experiments import Experiment  # noqa: E402

DAY_MS = 86_400_000
START_MS = 1_800_000_000_000 - 7 * DAY_MS


def exposure_section(args) -> None:
    import torch

    from benchmarks.serving import NUM_PINS, REQUEST_TS, SNAPSHOT_HOLDER, requests, service_for, synthetic_snapshot

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    snapshot = synthetic_snapshot(rng)
    SNAPSHOT_HOLDER.append(snapshot)
    service = service_for("default", snapshot, torch.device("cpu"), rng)
    workload = requests(args.requests_timed, args.candidates, rng)
    with tempfile.TemporaryDirectory() as directory:
        log = ExposureLog(directory, roll_requests=10_000)
        timings: dict[str, list[float]] = {"off": [], "on": []}
        for user, candidates in workload[:3]:  # warm-up
            service.rank(user, REQUEST_TS, candidates)
        for user, candidates in workload:
            for variant in ("off", "on"):
                service.exposures = log if variant == "on" else None
                started = time.perf_counter()
                service.rank(user, REQUEST_TS, candidates)
                timings[variant].append(1000 * (time.perf_counter() - started))
        log.close()
    p = lambda values, q: float(np.percentile(values, q))  # noqa: E731
    print(f"exposure log on /rank's service path ({args.candidates} candidates, {len(workload)} requests, {NUM_PINS} pins, {args.threads} threads)")
    print("| exposure log | p50 ms | p99 ms |\n| --- | ---: | ---: |")
    for variant in ("off", "on"):
        print(f"| {variant} | {p(timings[variant], 50):.2f} | {p(timings[variant], 99):.2f} |")
    added = [on - off for on, off in zip(timings["on"], timings["off"])]
    print(f"added per request: median {statistics.median(added):.3f} ms, p99 of on − p99 of off {p(timings['on'], 99) - p(timings['off'], 99):+.2f} ms")


def write_synthetic_logs(root: Path, n_requests: int, n_users: int, experiment: Experiment, rng: np.random.Generator) -> None:
    """``served`` and ``actions`` tables of an experiment's week, in chunks (bounded memory)."""
    chunk = 2_000_000
    for start in range(0, n_requests, chunk):
        n = min(chunk, n_requests - start)
        users = rng.integers(1, n_users + 1, size=n)
        ts = START_MS + rng.integers(0, 7 * DAY_MS, size=n)
        offsets = pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32))
        table = pa.table({
            "request_id": pc.cast(pa.array(np.arange(start, start + n)), pa.string()), "user_id": users, "ts": ts,
            "arm": pa.array(np.full(n, "control")),
            "experiment": pa.array(np.full(n, experiment.name)), "model_version": pa.array(np.full(n, "1")),
            "pin_ids": pa.ListArray.from_arrays(offsets, pa.array(np.tile([1, 2], n).astype(np.int64))),
            "scores": pa.ListArray.from_arrays(offsets, pa.array(np.tile([0.5, 0.4], n))),
        }, schema=SERVED_SCHEMA)
        directory = root / SERVED / "dt=2027-01-01"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, directory / f"part-{start}.parquet")
        n_actions = 3 * n // 5
        actions = pa.table({"user_id": rng.integers(1, n_users + 1, size=n_actions),
                            "pin_id": rng.integers(1, 100_000, size=n_actions),
                            "ts": START_MS - 14 * DAY_MS + rng.integers(0, 21 * DAY_MS, size=n_actions),
                            "action": pa.array(np.array(["repin", "click", "closeup", "hide"])[rng.integers(0, 4, size=n_actions)])},
                           schema=schema.arrow_schema(schema.ACTIONS, with_dt=False))
        directory = root / schema.ACTIONS / "dt=2027-01-01"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(actions, directory / f"part-{start}.parquet")


def readout_section(args) -> None:
    from homefeed import readout
    from homefeed.spark import session
    from jobs import experiment_readout as job

    cfg = load_config(environ={})
    experiment = Experiment("bench", "1", "2", traffic=0.5, salt="bench-salt", holdout_fraction=0.01, holdout_salt="h",
                            start_ms=START_MS, actor="bench", reason="")
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        started = time.perf_counter()
        write_synthetic_logs(root, args.requests, args.users, experiment, np.random.default_rng(1))
        generated = time.perf_counter() - started
        spark = session(cfg, "bench-readout")
        window = job.Window(experiment.name, experiment.holdout_fraction, experiment.holdout_salt, experiment.traffic, experiment.salt,
                            experiment.start_ms, START_MS + 7 * DAY_MS - 1, cfg.experiments.pre_period_days)
        started = time.perf_counter()
        tables = job.user_tables(spark, str(root), None, window)
        spark_s = time.perf_counter() - started
        started = time.perf_counter()
        result = readout.summarize(experiment, tables.users, tables.daily, window.end_ms, cfg)
        stats_s = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"readout over {args.requests:,} served requests from {args.users:,} users ({len(tables.users):,} exposed; "
          f"{len(tables.daily):,} user-days); synthetic logs written in {generated:.0f} s")
    print("| step | seconds |\n| --- | ---: |")
    print(f"| Spark: per-user and per-day tables, collected | {spark_s:.1f} |")
    print(f"| statistics (tea-tasting), decision | {stats_s:.1f} |")
    print(f"| end to end | {spark_s + stats_s:.1f} |")
    print(f"driver peak RSS {peak_gb:.1f} GiB; verdict {result['decision']['verdict']}; arms "
          + ", ".join(f"{a} {result['arms'][a]['users']}" for a in (arms.CONTROL, arms.TREATMENT)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="exposure,readout")
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--requests-timed", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    args = parser.parse_args()
    sections = args.sections.split(",")
    if "exposure" in sections:
        exposure_section(args)
    if "readout" in sections:
        readout_section(args)


if __name__ == "__main__":
    main()
