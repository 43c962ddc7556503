"""Instance generation throughput and output size: the request-level layout vs the old
per-impression layout, and homefeed's sequence plan vs the straightforward window-frame plan, on
uniform users and on skewed users (a few with ~100× the median actions), in one run.

    .venv/bin/python benchmarks/instances.py --impressions 10000000 [--repeats 1] [--window-timeout 900]
    .venv/bin/python benchmarks/instances.py --impressions 2000000 --plans homefeed:job,per-impression:job

Every measurement runs in a fresh process (its own local[2] JVM), so the peak resident memory
of the JVM (VmHWM) belongs to that measurement alone. Rows:

- ``homefeed/job``: the whole instance job (extract, labels, sequences, features, splits,
  sampling, standardisation, atomic publish of ``rows`` + ``sequences``), impressions per second
  end to end, and the bytes it wrote per input impression;
- ``per-impression/job``: the same transforms written the way homefeed did before the
  request-level layout (kept here only, as the benchmark's variant): every row carries its own
  copy of the sequence and of the candidate's content embedding;
- ``embed/word2vec``, ``embed/als``: the learned pin embeddings (``jobs/embed_pins.py``, the
  pipeline's ``embed_pins`` stage before the instance job) on the same raw data, engagement up to
  the day before the first validation day as the pipeline runs it; compare with ``homefeed/job``;
- ``sequences``: the sequence stage alone, written to Spark's no-op sink, for both plans. The
  window-frame plan collects every earlier action of the user per impression over a
  ``rangeBetween(unbounded, -1)`` frame and keeps the last 100: quadratic for heavy users.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def window_frame_sequences(impressions, actions, seq_len: int, delay_ms: int):
    """The plan to avoid: per impression, every earlier action of the user, then slice."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cutoffs = impressions.select("user_id", "request_id", "pin_id", (F.col("ts") - delay_ms).alias("_t"), F.lit(None).alias("_event"))
    events = actions.select("user_id", F.lit(None).cast("string").alias("request_id"), F.lit(None).cast("long").alias("pin_id"),
                            F.col("ts").alias("_t"), F.struct(F.col("ts"), F.col("pin_id"), F.col("action")).alias("_event"))
    before = Window.partitionBy("user_id").orderBy("_t").rangeBetween(Window.unboundedPreceding, -1)
    history = cutoffs.unionByName(events, allowMissingColumns=True).withColumn("_history", F.collect_list("_event").over(before))
    latest = F.slice(F.reverse(F.col("_history")), 1, seq_len)
    return history.filter(F.col("request_id").isNotNull()).select(
        "request_id", "pin_id",
        F.transform(latest, lambda e: e["pin_id"]).alias("seq_pin_id"),
        F.transform(latest, lambda e: e["ts"]).alias("seq_ts"),
    )


def per_impression_job(spark, raw: str, out: str, cfg) -> None:
    """The instance job writing the old per-impression layout: the same rows, each with its own
    copy of the request's sequence and of the candidate's content embedding."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from homefeed import schema
    from jobs import build_instances as job

    icfg = cfg.instances
    tables, start, end = job.extract(spark, raw, None, None, int(time.time() * 1000))
    frames = job.build_instance_frames(tables, start, end, icfg)
    rows = frames.rows.persist(StorageLevel.MEMORY_AND_DISK)
    stats = job.fit_standardizer(rows.filter(F.col(schema.SPLIT) == "train"))
    embeddings = tables.pins.select("pin_id", F.col("embedding").alias(schema.PIN_EMBEDDING))
    columns = [c for c in schema.ROW_COLUMNS if c != schema.SEQUENCE_KEY] + [schema.PIN_EMBEDDING, *schema.SEQUENCE_COLUMNS, schema.SPLIT]
    final = job.standardize(job.with_sequences(rows, frames.blocks), stats).join(F.broadcast(embeddings), "pin_id", "left")
    final.select(*columns).sortWithinPartitions(schema.SPLIT, "user_id", "ts").write.mode("overwrite").partitionBy(
        schema.SPLIT
    ).parquet(out)
    job._label_rates(spark.read.parquet(out))
    rows.unpersist()


def output_bytes(out: str) -> int:
    return sum(p.stat().st_size for p in Path(out).rglob("*.parquet") if "_pin_features" not in p.parts)


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM: since its exec, unlike getrusage's ru_maxrss, which
    a child inherits from the parent that forked it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def jvm_peak_rss_mb(spark) -> float:
    return peak_rss_mb(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())


def measure_one(raw: str, plan: str, stage: str, out: str) -> dict:
    """One measurement, in this (fresh) process."""

    from homefeed.config import load_config
    from homefeed.spark import session
    from jobs import build_instances as job

    cfg = load_config(environ={})
    spark = session(cfg, "benchmark")
    started = time.perf_counter()
    if plan == "embed":
        from homefeed import storage
        from jobs import embed_pins

        cutoff = job.last_training_day(storage.landed_days(raw)[-1], cfg.instances)
        embed_pins.run(spark, raw, out, cfg.with_overrides({"embeddings": {"method": stage}}), cutoff)
    elif stage == "job" and plan == "per-impression":
        per_impression_job(spark, raw, out, cfg)
    elif stage == "job":
        job.run(spark, raw, out, cfg)
    else:
        tables, _, end = job.extract(spark, raw, None, None, int(time.time() * 1000))
        if plan == "homefeed":
            ranked = job.rank_events(tables.impressions, tables.actions, tables.pins, cfg.instances.delay_ms)
            sequences = job.attach_sequences(ranked, tables.actions, cfg.instances.seq_len)
        else:
            sequences = window_frame_sequences(tables.impressions, tables.actions, cfg.instances.seq_len, cfg.instances.delay_ms)
        sequences.write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - started
    impressions = spark.read.parquet(f"{raw}/impressions").count()
    written = output_bytes(out) if stage == "job" else 0
    return {"seconds": seconds, "impressions": impressions, "peak_jvm_mb": jvm_peak_rss_mb(spark), "bytes": written,
            "peak_python_mb": peak_rss_mb(os.getpid())}


def run_measurement(raw: Path, plan: str, stage: str, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as out:
        try:
            completed = subprocess.run([sys.executable, __file__, "--one", str(raw), plan, stage, out], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"seconds": float("inf"), "timed_out": True}
    if completed.returncode != 0:
        raise RuntimeError(f"{plan}/{stage} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions", type=int, default=10_000_000)
    parser.add_argument("--heavy-users", type=int, default=5, help="users with heavy-factor × the median activity (skewed variant)")
    parser.add_argument("--repeats", type=int, default=1, help="medians over this many runs")
    parser.add_argument("--window-timeout", type=float, default=900, help="seconds before the window-frame plan is called off")
    parser.add_argument("--plans", default="homefeed:job,per-impression:job,homefeed:sequences,window-frame:sequences",
                        help="comma-separated PLAN:STAGE pairs to measure")
    parser.add_argument("--variants", default="uniform,skewed", help="comma-separated: uniform, skewed")
    parser.add_argument("--one", nargs=4, metavar=("RAW", "PLAN", "STAGE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(*args.one)))
        return

    from homefeed import simulate
    from homefeed.config import load_config

    cfg = load_config(environ={}).simulator.model_copy(update={"impressions": args.impressions})
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for variant, heavy in [(v, 0 if v == "uniform" else args.heavy_users) for v in args.variants.split(",")]:
            raw = Path(scratch) / variant
            counts = simulate.generate(cfg, raw, heavy_users=heavy)
            print(f"{variant}: {counts}", file=sys.stderr)
            for plan, stage in (pair.split(":") for pair in args.plans.split(",")):
                timeout = args.window_timeout if plan == "window-frame" else 3600
                results = [run_measurement(raw, plan, stage, timeout) for _ in range(args.repeats)]
                seconds = statistics.median(r["seconds"] for r in results)
                done = [r for r in results if not r.get("timed_out")]
                rows.append({
                    "variant": variant, "plan": plan, "stage": stage, "impressions": counts["impressions"],
                    "seconds": seconds, "timed_out": len(done) < len(results),
                    "peak_jvm_mb": statistics.median(r["peak_jvm_mb"] for r in done) if done else float("nan"),
                    "bytes": statistics.median(r["bytes"] for r in done) if done else 0,
                    "peak_python_mb": statistics.median(r["peak_python_mb"] for r in done) if done else float("nan"),
                })
                print(f"  {plan}/{stage}: {seconds:.1f} s", file=sys.stderr)
    print_table(rows, args)


def print_table(rows: list[dict], args) -> None:
    print(f"\nInstance generation, local[2], median of {args.repeats} (each in a fresh JVM)\n")
    print("| variant | plan | stage | impressions | seconds | impressions/s | output bytes / impression | peak JVM RSS (MB) | peak driver RSS (MB) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        seconds = f"> {args.window_timeout:.0f} (called off)" if r["timed_out"] else f"{r['seconds']:.1f}"
        rate = "-" if r["timed_out"] else f"{r['impressions'] / r['seconds']:,.0f}"
        size = f"{r['bytes'] / r['impressions']:.1f}" if r["bytes"] else "-"
        print(f"| {r['variant']} | {r['plan']} | {r['stage']} | {r['impressions']:,} | {seconds} | {rate} | {size} | {r['peak_jvm_mb']:.0f} "
              f"| {r['peak_python_mb']:.0f} |")
    by = {(r["variant"], r["plan"], r["stage"]): r["seconds"] for r in rows}
    size = {(r["variant"], r["plan"]): r["bytes"] for r in rows if r["stage"] == "job"}
    if ("uniform", "homefeed", "job") in by and ("skewed", "homefeed", "job") in by:
        print(f"\nskewed / uniform, whole job: {by[('skewed', 'homefeed', 'job')] / by[('uniform', 'homefeed', 'job')]:.2f}×")
    for variant in ("uniform", "skewed"):
        for method in ("word2vec", "als"):
            if (variant, "embed", method) in by and (variant, "homefeed", "job") in by:
                print(f"{variant}: embed_pins ({method}) takes {by[(variant, 'embed', method)] / by[(variant, 'homefeed', 'job')]:.0%} "
                      "of the instance job's time")
        if (variant, "per-impression", "job") in by and (variant, "homefeed", "job") in by:
            print(f"{variant}: request-level job {by[(variant, 'per-impression', 'job')] / by[(variant, 'homefeed', 'job')]:.2f}× "
                  f"the per-impression layout's speed, {size[(variant, 'homefeed')] / size[(variant, 'per-impression')]:.2f}× its bytes")
        if (variant, "window-frame", "sequences") not in by or (variant, "homefeed", "sequences") not in by:
            continue
        frame, ours = by[(variant, "window-frame", "sequences")], by[(variant, "homefeed", "sequences")]
        if frame == float("inf"):
            print(f"{variant}: sequence stage > {args.window_timeout / ours:.1f}× faster than the window-frame plan (called off at {args.window_timeout:.0f} s)")
        else:
            print(f"{variant}: sequence stage {frame / ours:.1f}× faster than the window-frame plan")

if __name__ == "__main__":
    main()
