"""The local platform `homefeed run`, `homefeed airflow` and `homefeed backfill` start: an embedded
Airflow (SQLite metadata and a login under the storage root, the project's DAGs), an optional local
S3 server (SeaweedFS) as the storage of record, and a full retraining run of homefeed_retrain
with its output followed into the run's ``run.log``.

The CLI's commands are thin wrappers; nothing here imports the CLI. Messages for the operator go
through ``say`` (the CLI prints them on stderr).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homefeed.airflow_setup import PlatformError, airflow_bin, airflow_env, migrate_airflow_db, run_airflow
from homefeed.config import Config

if TYPE_CHECKING:
    from homefeed import pipeline

LOCAL_BUCKET = "homefeed"
Say = Callable[[str], None]


def _timed(say: Say, message: str, work: Callable[[], Any]) -> Any:
    say(f"==> {message}")
    started = time.perf_counter()
    result = work()
    say(f"    done in {time.perf_counter() - started:.1f}s")
    return result


# --------------------------------------------------------------------------- local S3
def start_local_s3(root: Path, say: Say):
    """SeaweedFS under <root>/s3, with credentials generated once and kept there (mode 600)."""
    import secrets

    from homefeed import storage
    from homefeed.local_s3 import SeaweedServer

    directory = root.resolve() / "s3"
    directory.mkdir(parents=True, exist_ok=True)
    credentials = directory / "credentials.json"
    if not credentials.exists():
        storage.write_secret(credentials, json.dumps({"access_key": f"homefeed-{secrets.token_hex(4)}", "secret_key": secrets.token_urlsafe(24)}))
    keys = json.loads(credentials.read_text())
    return _timed(say, f"starting a local S3 server (SeaweedFS) with its data in {directory}",
                  lambda: SeaweedServer(directory, keys["access_key"], keys["secret_key"], LOCAL_BUCKET).start())


def use_local_s3(server, cfg: Config, raw: Path, say: Say) -> tuple[Config, str]:
    """Point this process and the DAG run at the server; the raw data goes there first."""
    from homefeed import s3, storage

    s3_uri = f"s3://{LOCAL_BUCKET}"
    os.environ.update({**server.environment(), "HOMEFEED__STORAGE__S3_URI": s3_uri})
    raw_uri = f"{s3_uri}/raw/{raw.name}"
    client = s3.client()
    if not s3.is_published(client, raw_uri) or s3.read_manifest(client, raw_uri) != storage.read_manifest(raw):
        _timed(say, f"publishing {raw} to {raw_uri}", lambda: s3.publish_directory(client, raw, raw_uri))
    return cfg.with_overrides({"storage": {"s3_uri": s3_uri}}), raw_uri


def s3_summary(cfg: Config, label: str) -> list[str]:
    from homefeed import s3

    client = s3.client()
    return [f"{uri}/: {len(s3.list_keys(client, uri))} objects" for uri in (f"{cfg.storage.s3_uri}/runs/{label}", f"{cfg.storage.s3_uri}/mlflow")]


# --------------------------------------------------------------------------- embedded Airflow


def run_dag(cfg: Config, dag_id: str, conf: dict, logical_date: str, config_files: list[Path] | None = None,
            log_path: Path | None = None, verbose: bool = False) -> None:
    """``airflow dags test``; with ``log_path``, its whole output goes there and the terminal shows
    homefeed's own lines (everything with ``verbose``). A failed run raises PlatformError."""
    from homefeed import progress

    env = airflow_env(cfg, config_files)
    migrate_airflow_db(env)
    args = ["dags", "test", dag_id, logical_date, "-c", json.dumps(conf)]
    if log_path is None:
        return run_airflow(env, *args)
    code = progress.run_logged([airflow_bin(), *args], env, log_path, sys.stdout, verbose)
    if code != 0:
        raise PlatformError(f"the run failed (exit {code}); its whole log: {log_path}", code)


def supervise(commands: dict[str, list[str]], env: dict[str, str], say: Say = print) -> int:
    """Run each command in a session of its own until one ends or this process is told to stop
    (SIGTERM / SIGINT / SIGHUP); then stop every one and all they started (task runners included,
    which a signal to a process group misses). The exit code: the first one's, or 128 + the signal.

    Not honcho or circus: both stop a child by its process group, which Airflow's task runners leave.
    """
    import signal

    from homefeed.processes import stop_tree

    started = {subprocess.Popen(command, env=env, start_new_session=True).pid: name for name, command in commands.items()}
    stopping: list[int] = []

    def stop_all(signum: int) -> None:
        for pid in started:
            stop_tree(pid, signum)

    def on_signal(signum, _frame) -> None:
        if not stopping:
            stopping.append(signum)
            stop_all(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    pid, status = os.wait()  # the first child to end (a signal handler interrupts, then it waits on)
    code = os.waitstatus_to_exitcode(status)
    if not stopping:
        say(f"{started.get(pid, pid)} ended (exit code {code}): stopping the others")
        stopping.append(0)
        stop_all(signal.SIGTERM)
    for _ in started:  # bounded: one wait per child left
        with contextlib.suppress(ChildProcessError):
            os.wait()
    return 128 + stopping[0] if stopping[0] else code


# --------------------------------------------------------------------------- the main job
def claim_run_label(cfg: Config) -> str:
    """A fresh run label whose directory this process created: ``run-<UTC time>``, with a suffix
    when another run claimed the same second (two `homefeed run` at once share nothing)."""
    from homefeed import storage

    runs = storage.local_path(cfg.storage.root) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("run-%Y%m%dT%H%M%S", time.gmtime())
    for attempt in range(1, 1000):
        label = stamp if attempt == 1 else f"{stamp}-{attempt}"
        try:
            (runs / label).mkdir()
            return label
        except FileExistsError:
            continue
    raise PlatformError(f"no free run label under {runs} for {stamp}")


def run_retraining(cfg: Config, raw: Path | None, label: str | None, s3: bool, config_files: list[Path] | None,
                   verbose: bool, say: Say) -> tuple[Config, Path]:
    """A full retraining run of homefeed_retrain (synthetic data simulated first when ``raw`` is
    None); (the config it ran with, its run directory)."""
    from homefeed import pipeline, simulate, storage

    root = storage.local_path(cfg.storage.root)
    if raw is None:
        raw = root / "raw" / f"synthetic-seed{cfg.simulator.seed}-n{cfg.simulator.impressions}"
        if not storage.is_published(raw):
            _timed(say, f"simulating {cfg.simulator.impressions} impressions into {raw}", lambda: simulate.generate(cfg.simulator, raw))
    end_day = storage.landed_days(raw)[-1].isoformat()
    label = label or claim_run_label(cfg)
    conf = {"raw": str(Path(raw).resolve()), "end_date": end_day, "window_days": cfg.simulator.days, "run_label": label}
    server = start_local_s3(root, say) if s3 else None
    try:
        if server is not None:
            cfg, conf["raw"] = use_local_s3(server, cfg, Path(raw), say)
        log_path = pipeline.run_dir(cfg, label) / "run.log"
        # A fresh logical date per run: `airflow dags test` resumes an existing run of the same date.
        # To the microsecond: two runs started in the same second are two Airflow runs.
        logical_date = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        _timed(say, f"running DAG homefeed_retrain on {conf['raw']} (window ending {end_day}); the whole log: {log_path}",
               lambda: run_dag(cfg, "homefeed_retrain", conf, logical_date, config_files, log_path=log_path, verbose=verbose))
        if server is not None:
            for line in s3_summary(cfg, label):
                say(line)
    finally:
        if server is not None:
            server.stop()
    return cfg, pipeline.run_dir(cfg, label)


def run_summary(evaluation: "pipeline.Evaluated | None", gate: "pipeline.Gated | None", state, model_name: str) -> list[str]:
    """What a finished run says first: the challenger's test metrics with their 95% intervals
    (HIT@k with the number of requests it counts), the gate's verdict, and the aliases."""
    lines = []
    if evaluation:
        challenger = evaluation.challenger
        k, overall, intervals = challenger["hit_k"], challenger["overall"], challenger["intervals"]["overall"]
        lines.append("test AUC per head (95% interval): " + ", ".join(
            f"{h} {m['auc']:.4f} [{intervals[h]['auc'][0]:.4f}, {intervals[h]['auc'][1]:.4f}]" for h, m in overall.items()))
        hits = [f"{h} {overall[h]['hit']:.3f} over {overall[h].get('hit_requests', '?')} requests" for h in overall
                if overall[h].get("hit") == overall[h].get("hit")]  # NaN: no request had more than k candidates
        lines.append(f"test HIT@{k}: " + (", ".join(hits) if hits else f"undefined (no request with a positive and more than {k} candidates)"))
    lines.append(gate.summary if gate else "gate: did not run")
    version = lambda v: "none" if v is None else f"v{v}"  # noqa: E731
    lines.append(f"registry: {model_name} champion={version(state.champion)} challenger={version(state.challenger)} "
                 f"previous={version(state.previous)}")
    return lines
