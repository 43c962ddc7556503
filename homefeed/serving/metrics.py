"""What ``GET /metrics`` exposes (Prometheus text format), one registry per app.

The seed monitors the realtime sequence per action type: ``homefeed_events_total{action}`` is
what arrives, ``homefeed_sequence_actions_total{action}`` what the model was shown, so a shift in
either (a client that stopped sending hides, a store that lost clicks) shows as a ratio change.
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from homefeed import schema

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
LENGTH_BUCKETS = (0, 1, 5, 10, 25, 50, 75, 99, 100)
# Set by `homefeed serve` for its worker processes (serving.workers > 1): each writes its values to
# files there, and a scrape of any worker adds all of them up (Prometheus' multiprocess mode).
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR))


class WorkerFilesCollector(multiprocess.MultiProcessCollector):
    """Every worker's values, leaving out a file another worker is still creating.

    prometheus_client creates a worker's file and sizes it a moment later; a scrape that read it in
    between failed whole (struct.error → a 500 from /metrics), and for good if that worker died
    there (prometheus/client_python#1199; 0.26 has no fix). Once sized, a file reads as empty until
    its first value is written, so leaving out the 0-byte ones loses nothing.
    """

    def collect(self):
        return self.merge([path for path in glob.glob(os.path.join(self._path, "*.db")) if _sized(path)], accumulate=True)


def _sized(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:  # a dead worker's live gauge, removed since the glob
        return False


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("homefeed_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.events = Counter("homefeed_events", "Events ingested by POST /events, by action type", ["action"], registry=self.registry)
        self.store_read = Histogram("homefeed_store_read_seconds", "Sequence store read latency per ranking request",
                                    buckets=STORE_BUCKETS, registry=self.registry)
        self.sequence_length = Histogram("homefeed_sequence_length", "Actions in the sequence the model saw, per request",
                                         buckets=LENGTH_BUCKETS, registry=self.registry)
        self.sequence_actions = Counter("homefeed_sequence_actions", "Actions shown to the model in ranked sequences, by type",
                                        ["action"], registry=self.registry)
        self.store_errors = Counter("homefeed_store_errors", "Sequence store and event log failures, by operation (read, append, event_log)", ["operation"], registry=self.registry)
        self.degraded = Counter("homefeed_rank_degraded", "Ranking requests answered without the user's sequence (store unreachable)",
                                registry=self.registry)
        self.inflight = Gauge("homefeed_inflight_requests", "Ranking requests being served or waiting for a worker", registry=self.registry,
                              multiprocess_mode="livesum")
        self.rejected = Counter("homefeed_rejected", "Ranking requests refused with 503 (serving.max_inflight reached)", registry=self.registry)
        self.arms = Counter("homefeed_rank_arm", "Ranking requests answered, by experiment arm", ["arm"], registry=self.registry)
        self.exposure_log_errors = Counter("homefeed_exposure_log_errors", "Rankings refused because the exposure log could not record them",
                                           registry=self.registry)
        self.experiment_running = Gauge("homefeed_experiment_running", "1 while an experiment runs, by whether its challenger is loaded",
                                        ["challenger_loaded"], registry=self.registry, multiprocess_mode="livemax")
        self.challenger_failures = Gauge("homefeed_experiment_challenger_load_failures",
                                         "Failed loads of the running experiment's challenger since start (everyone gets the champion)",
                                         registry=self.registry, multiprocess_mode="sum")
        self.store_rebuilds = Gauge("homefeed_store_rebuilds", "Times the sequence store was found lost while serving (its "
                                    "file deleted or replaced, its Redis server restarted empty) and refilled from the logs", registry=self.registry,
                                    multiprocess_mode="sum")
        for loaded in ("true", "false"):  # its file exists before the first scrape, as every other metric's does
            self.experiment_running.labels(loaded)
        for arm in ("holdout", "control", "treatment", "none"):
            self.arms.labels(arm)
        for action in schema.ACTION_NAMES:  # every series exists from the start, at 0
            self.events.labels(action)
            self.sequence_actions.labels(action)
        for operation in ("read", "append", "event_log"):
            self.store_errors.labels(operation)
        self.content_type = CONTENT_TYPE_LATEST

    @contextlib.contextmanager
    def timed(self, endpoint: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.latency.labels(endpoint).observe(time.perf_counter() - started)

    def observe_ranking(self, ranking, from_store: bool) -> None:
        """A ranking's sequence: its length, its action types, and the store read behind it."""
        self.arms.labels(ranking.arm).inc()
        self.sequence_length.observe(ranking.sequence_length)
        for code, count in ranking.sequence_actions.items():
            self.sequence_actions.labels(schema.ACTION_NAMES_BY_CODE.get(code, "unknown")).inc(count)
        if not from_store:
            return
        self.store_read.observe(ranking.store_read_s)
        if ranking.sequence_degraded:
            self.store_errors.labels("read").inc()
            self.degraded.inc()

    def observe_experiment(self, state, failures: int) -> None:
        """The service's experiment state, set before each scrape."""
        running = state.experiment is not None
        self.experiment_running.labels("true").set(1 if running and state.challenger is not None else 0)
        self.experiment_running.labels("false").set(1 if running and state.challenger is None else 0)
        self.challenger_failures.set(failures)

    def render(self) -> bytes:
        """This process's metrics, or every worker's added up in multiprocess mode."""
        if not multiprocess_mode():
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        WorkerFilesCollector(everyone)
        return generate_latest(everyone)

    @staticmethod
    def worker_exited() -> None:
        """Drop this worker's live gauges (in-flight requests) from the sum; its counts stay."""
        if multiprocess_mode():
            multiprocess.mark_process_dead(os.getpid())
