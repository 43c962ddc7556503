"""The HTTP face of the ranking service (FastAPI).

    GET  /health          the process is up
    GET  /ready           a model is loaded (its version)
    POST /rank            {user_id, request_ts, candidates: [{pin_id, ts, source}], sequence?}
    POST /events          {user_id, pin_id, action, ts}: append to the user's realtime sequence
    POST /admin/reload    load the version the alias points at now (and follow the running experiment)
    GET  /metrics         Prometheus text: latency, events by action, store reads and errors, sequence lengths

The sequence store failing never fails a ranking: ``/rank`` then answers without the user's
history and says so (``sequence_degraded``, counted in ``/metrics``), while ``/events`` answers 503
and acknowledges nothing it did not keep. With ``serving.token`` set, ``/events`` and ``/admin/*``
need ``Authorization: Bearer <token>`` (``homefeed serve`` refuses to listen beyond loopback
without one).

Requests are validated strictly (unknown fields, wrong types, too many candidates → 422 with the
reason); a body over ``serving.max_body_bytes`` gets 413 before any of it is parsed (JSON is
parsed on the event loop, so a 50 MB body used to stall ``/health`` for half a minute); scoring
runs in the thread pool (sync endpoints), off the event loop. The app is built around a service
that already holds a model: ``create_app`` raises before serving when there is no champion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from homefeed import features, schema, storage
from homefeed.config import Config
from homefeed.event_log import EventLogError
from homefeed.sequence_store import SequenceStoreUnavailable
from homefeed.serving.metrics import MULTIPROCESS_DIR, ServiceMetrics
from homefeed.serving.service import RankingService

log = logging.getLogger(__name__)

Source = Literal[schema.SOURCES]  # type: ignore[valid-type]
ActionName = Literal[schema.ACTION_NAMES]  # type: ignore[valid-type]


# Ids and times are int64 end to end (Arrow, torch, Parquet): a larger number is a bad request
# (422 naming the field), not an OverflowError deep in feature building (500).
INT64_MAX = 2**63 - 1
CONFIG_ENV = "HOMEFEED_SERVING_CONFIG"  # the resolved config, handed to worker processes
Id = Annotated[int, Field(ge=0, le=INT64_MAX)]  # ids and ms timestamps alike


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CandidateIn(_Strict):
    pin_id: Id
    ts: Id = Field(description="the pin's timestamp, ms (orders the chronological feed)")
    source: Source


class SequenceEventIn(_Strict):
    pin_id: Id
    action: ActionName
    ts: Id


# Swagger's "Try it out" sends these. Without them it pre-filled every id with the int64 maximum,
# which JavaScript rounds past it: the first try answered 422.
EXAMPLE_TS = 1_767_268_800_000  # 2026-01-01 12:00 UTC


class RankRequest(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "user_id": 12345, "request_ts": EXAMPLE_TS,
        "candidates": [{"pin_id": 101, "ts": EXAMPLE_TS - 3_600_000, "source": "pfy"},
                       {"pin_id": 102, "ts": EXAMPLE_TS - 60_000, "source": "follow"}],
    }]})

    user_id: Id
    request_ts: Id = Field(description="ms")
    candidates: list[CandidateIn] = Field(min_length=1)
    sequence: list[SequenceEventIn] | None = Field(
        None, description="the user's recent actions, newest last; omitted: the service's sequence store")


class EventIn(SequenceEventIn):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"user_id": 12345, "pin_id": 101, "action": "repin", "ts": EXAMPLE_TS - 30_000}]})

    user_id: Id


class RankedPin(BaseModel):
    pin_id: int
    score: float
    scores: dict[str, float]


class RankResponse(BaseModel):
    request_id: str = Field(description="this answer's id in the exposure log")
    model_version: str = Field(description="the version that ranked this feed (the challenger for the treatment arm)")
    arm: Literal["holdout", "control", "treatment", "none"] = Field(
        description="the user's arm: holdout (never a model), control (champion) and treatment (challenger) of the "
                    "running experiment, none (the champion, no experiment or outside it)")
    experiment: str = Field(description="the running experiment's name; empty when none runs")
    holdout: bool
    sequence_length: int = Field(description="actions of the user's realtime sequence the model saw")
    sequence_degraded: bool = Field(description="true: the sequence store was unreachable, ranked without the history")
    ranked: list[RankedPin]


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        body, more = b"", True
        while more:  # at most max_bytes are ever held
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay(message, receive), send)
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(send)
        return await self.app(scope, _replay({"type": "http.request", "body": body, "more_body": False}, receive), send)

    async def _too_large(self, send) -> None:
        text = f'{{"detail": "request body over serving.max_body_bytes = {self.max_bytes} bytes"}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(text)).encode())]})
        await send({"type": "http.response.body", "body": text})


class InflightLimit:
    """ASGI middleware: at most ``max_inflight`` requests to ``paths`` at once; beyond, 503 at once.

    A ranking service that queues without end answers everyone late (under 8 threads × 500
    candidates p99 reached 7.4 s); refusing the excess keeps the admitted requests fast and
    tells the caller to retry or fall back. Counted in ``/metrics``.
    """

    def __init__(self, app, max_inflight: int, paths: tuple[str, ...], metrics: ServiceMetrics):
        self.app, self.max_inflight, self.paths, self.metrics = app, max_inflight, paths, metrics
        self.inflight = 0  # the event loop is one thread: no lock needed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        if self.inflight >= self.max_inflight:
            self.metrics.rejected.inc()
            text = f'{{"detail": "overloaded: {self.inflight} requests in flight (serving.max_inflight); retry shortly"}}'.encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"), (b"content-length", str(len(text)).encode())]})
            return await send({"type": "http.response.body", "body": text})
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()


def _replay(first: dict, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return first
        return await receive()

    return replayed


def bearer_token_check(token: str):
    """A dependency refusing requests without ``Authorization: Bearer <token>`` (none when unset)."""

    def check(request: Request) -> None:
        if not token:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "this endpoint needs Authorization: Bearer <serving.token>", headers={"WWW-Authenticate": "Bearer"})

    return check


def create_app(cfg: Config, service: RankingService | None = None) -> FastAPI:
    """The app; loads the model behind ``serving.alias`` unless a service is given."""
    service = service or RankingService.from_registry(cfg)
    log.info("serving %s v%s (alias %s); sequences in %s", cfg.registry.model_name, service.model.version,
             cfg.serving.alias, service.store.describe())
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        poller = asyncio.create_task(_poll_alias(cfg, service)) if cfg.serving.reload_poll_s > 0 else None
        yield
        if poller:
            poller.cancel()
        service.close()  # publishes the event journal
        metrics.worker_exited()

    # /docs from files in the fastapi-offline package: a CDN is not reachable everywhere. No /redoc:
    # its page fetches Redocly's logo from their CDN whatever the options, and /docs has it all.
    app = FastAPIOffline(title="homefeed ranking service", lifespan=lifespan, redoc_url=None,
                         description="Ranks a user's candidate pins with the champion (or the running experiment's "
                                     "challenger) and takes the user's actions for the realtime sequence.")
    app.add_middleware(BodySizeLimit, max_bytes=cfg.serving.max_body_bytes)
    app.add_middleware(InflightLimit, max_inflight=cfg.serving.max_inflight, paths=("/rank",), metrics=metrics)
    app.state.service = service
    app.state.metrics = metrics
    app.include_router(_status_routes(service, metrics))
    app.include_router(_ranking_routes(cfg, service, metrics))
    app.include_router(_write_routes(cfg, service, metrics))
    return app


def _status_routes(service: RankingService, metrics: ServiceMetrics) -> APIRouter:
    """/health, /ready and /metrics."""
    router = APIRouter()

    @router.get("/health")
    def health() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @router.get("/ready")
    def ready() -> dict:
        """Readiness: the served version, the running experiment, the last reload's error, the
        sequence store (checked, and refilled when it was lost) and how often it was rebuilt."""
        service.ensure_store()
        state = service.experiment
        experiment = None if state.experiment is None else {
            "name": state.experiment.name, "challenger_version": state.experiment.challenger_version,
            "traffic": state.experiment.traffic, "challenger_loaded": state.challenger is not None, "error": state.error,
        }
        return {"status": "ready", "model_version": service.model.version, "experiment": experiment,
                "reload_error": service.reload_error or None, "store": service.store.describe(),
                "store_rebuilds": service.store_rebuilds}

    @router.get("/metrics")
    def prometheus() -> Response:
        """Prometheus text: latency, events and sequence actions by type, store reads and errors,
        arms, the experiment, store rebuilds (all workers added up when there are several)."""
        metrics.observe_experiment(service.experiment, service.challenger_load_failures)
        metrics.store_rebuilds.set(service.store_rebuilds)
        return Response(metrics.render(), media_type=metrics.content_type)

    return router


def _ranking_routes(cfg: Config, service: RankingService, metrics: ServiceMetrics) -> APIRouter:
    """POST /rank."""
    router = APIRouter()

    @router.post("/rank", response_model=RankResponse)
    def rank(request: RankRequest) -> dict:
        """Rank the candidates for the user, best first: per-action probabilities and the utility
        score, with the user's arm and the model version that ranked them. Every answer is recorded
        in the exposure log (503 when it cannot be)."""
        with metrics.timed("rank"):
            if len(request.candidates) > cfg.serving.max_candidates:
                raise HTTPException(422, f"{len(request.candidates)} candidates; at most {cfg.serving.max_candidates} per request")
            candidates = [features.Candidate(c.pin_id, c.ts, c.source) for c in request.candidates]
            sequence = None if request.sequence is None else [e.model_dump() for e in request.sequence]
            try:
                ranking = service.rank(request.user_id, request.request_ts, candidates, sequence)
            except EventLogError as exc:  # an answer is given only once it is recorded
                metrics.exposure_log_errors.inc()
                raise HTTPException(503, f"ranking not recorded in the exposure log, retry later: {exc}") from None
            metrics.observe_ranking(ranking, from_store=sequence is None)
            return ranking.to_dict()

    return router


def _write_routes(cfg: Config, service: RankingService, metrics: ServiceMetrics) -> APIRouter:
    """POST /events and /admin/reload: behind the bearer token when one is set."""
    router = APIRouter()
    authorized = [Depends(bearer_token_check(cfg.serving.token))]

    @router.post("/events", dependencies=authorized)
    def events(event: EventIn) -> dict:
        """Record one action of a user: the event log first, then the sequence store, so the next
        ranking sees it. Acknowledged (200) only once kept; a retry is de-duplicated."""
        with metrics.timed("events"):
            # A clock far ahead would push the user's real actions out of the sequence (eviction keeps
            # the newest by event time), so such events are refused, not stored.
            latest = int(time.time() * 1000) + cfg.serving.max_event_skew_ms
            if event.ts > latest:
                raise HTTPException(422, f"ts {event.ts} is more than serving.max_event_skew_ms = {cfg.serving.max_event_skew_ms} ms in the future")
            try:
                added = service.record_event(event.user_id, event.pin_id, event.action, event.ts)
            except (SequenceStoreUnavailable, EventLogError) as exc:
                metrics.store_errors.labels("event_log" if isinstance(exc, EventLogError) else "append").inc()
                raise HTTPException(503, f"event not stored, retry later: {exc}") from None
            metrics.events.labels(event.action).inc()
            return {"stored": True, "new": added}

    @router.post("/admin/reload", dependencies=authorized)
    def reload() -> dict:
        """Load the version behind the alias now (the poll does it every serving.reload_poll_s);
        503 with the reason when it cannot be loaded, the loaded one serving on."""
        try:
            changed = service.reload(cfg)
        except Exception as exc:  # noqa: BLE001 - a version that cannot be loaded never replaces the one serving
            service.reload_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise HTTPException(503, f"reload failed, still serving v{service.model.version}: {service.reload_error}") from None
        service.reload_error = ""
        return {"model_version": service.model.version, "changed": changed}

    return router


def app_from_environment() -> FastAPI:
    """uvicorn's app factory in each worker process of :func:`run` (serving.workers > 1)."""
    return create_app(Config.model_validate_json(os.environ[CONFIG_ENV]))


def run(cfg: Config, host: str, port: int) -> None:
    """Serve until stopped: one process, or ``serving.workers`` processes on one socket with one
    ``/metrics`` for all of them. Start-up errors (no champion, an unreachable store) are raised
    here, once, before any worker starts."""
    import uvicorn

    if cfg.serving.workers == 1:
        uvicorn.run(create_app(cfg), host=host, port=port, log_level="info")
        return
    RankingService.from_registry(cfg).close()  # the same checks and the store's bootstrap, once
    metrics_dir = storage.local_path(cfg.storage.root) / "serving" / f"metrics-{port}"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # a previous run's values would be added in
    metrics_dir.mkdir(parents=True)
    os.environ[MULTIPROCESS_DIR] = str(metrics_dir)
    os.environ[CONFIG_ENV] = cfg.model_dump_json()  # inherited by the workers only, never written to disk
    log.info("serving with %d worker processes; /metrics adds them up (%s)", cfg.serving.workers, metrics_dir)
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=cfg.serving.workers,
                host=host, port=port, log_level="info")


async def _poll_alias(cfg: Config, service: RankingService) -> None:
    """Follow alias changes (a promotion or rollback) without a restart."""
    while True:
        await asyncio.sleep(cfg.serving.reload_poll_s)
        try:
            if await asyncio.to_thread(service.reload, cfg):
                log.info("alias %s now serves version %s", cfg.serving.alias, service.model.version)
            service.reload_error = ""
        except Exception as exc:  # a registry hiccup or an unloadable version must not stop serving the loaded model
            service.reload_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("reload failed; still serving version %s: %s", service.model.version, service.reload_error)
