"""The FastAPI app: ``create_app(settings)`` and the lifespan that opens the database, migrates it, loads
the serving model and starts the replica sync."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import math
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from fabguard.errors import InputError, ModelFileError
from fabguard.serve import db
from fabguard.serve.config import Settings
from fabguard.serve.engine import Batcher, NotReady
from fabguard.serve.inspection_log import log_inspections
from fabguard.serve.images import TooManyPixels, UnsupportedImage
from fabguard.serve.metrics import Metrics
from fabguard.serve.registry import Conflict, NotFound, Registry

MAX_ARTIFACT = 2 * 2**30  # the body of a model registration: the ONNX file, its report, the form around them
log = logging.getLogger("fabguard.serve")
BESIDE_WAIT_S = 0.05  # how long periodic work waits for a model call to run beside (none: an idle service)
GC_SECONDS, GC_FULL_EVERY = 1.0, 60  # young generations every second, all of them every minute
STATUS = ((NotFound, 404), (Conflict, 409), (UnsupportedImage, 415), (TooManyPixels, 413), (ModelFileError, 422),
          (InputError, 422))


@dataclass
class Service:
    """What the routers reach through :func:`fabguard.serve.dependencies.get_service`."""

    settings: Settings
    engine: sa.Engine
    registry: Registry
    metrics: Metrics
    batcher: Batcher
    experiments: object = None  # fabguard.serve.experiments.Experiments
    monitor: object = None  # fabguard.serve.monitor.Monitor: drift gauges and the status page's timeline
    tasks: list = field(default_factory=list)
    after: ThreadPoolExecutor = field(  # heatmaps, stored images and shadow scores, after the answer
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="fabguard-after"))
    router: object | None = None  # fabguard.active.Router, when router_dir is set
    yield_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="fabguard-yield"))


def write_token(settings: Settings) -> str:
    """The bearer token: from the settings, else ``home/token`` (made with 32 random bytes, mode 0600)."""
    if settings.token:
        return settings.token
    path = settings.home / "token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        log.warning("no token configured: wrote a new one to %s", path)
    return path.read_text().strip()


def start(settings: Settings) -> Service:
    """Open, migrate and fill the registry (blocking: runs before the app takes requests)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "heatmaps", "yield"):
        (settings.home / sub).mkdir(exist_ok=True)
    settings.token = write_token(settings)
    engine = db.create_engine(settings.db_url, autocheckpoint=False)  # checkpointed by the lifespan's task
    db.migrate(engine)
    registry = Registry(engine, settings)
    registry.ensure_default()
    registry.sync()
    metrics = Metrics(settings.max_batch)
    service = Service(settings, engine, registry, metrics,
                      Batcher(registry, metrics, settings.max_batch, settings.max_wait_ms))
    service.batcher.log = partial(log_inspections, service)
    from fabguard.serve.experiments import Experiments

    service.experiments = service.batcher.experiments = Experiments(engine, registry, settings, metrics)
    service.experiments.sync()
    from fabguard.serve.monitor import Monitor

    service.monitor = Monitor(service)
    if settings.router_dir is not None:
        from fabguard.active.router import Router

        service.router = Router.load(settings.router_dir)
    return service


async def every(seconds: float, work, what: str) -> None:
    """Run ``work`` on a worker thread every ``seconds``; a database outage is logged and retried, and any
    other failure is logged with its traceback and retried too: never fatal, never silent."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await run_in_threadpool(work)
        except (sa.exc.DBAPIError, InputError) as exc:
            log.warning("cannot %s: %s", what, str(exc).splitlines()[0])
        except Exception:  # noqa: BLE001  (a periodic task that died would stay dead for the process's life)
            log.exception("cannot %s", what)


def collector():
    """Garbage collection while the automatic one is off: the young generations each call, a full pass
    every ``GC_FULL_EVERY`` calls (frozen start-up objects are skipped even then)."""
    calls = itertools.count(1)
    return lambda: gc.collect(2 if next(calls) % GC_FULL_EVERY == 0 else 1)


def follow(service: Service) -> None:
    """Serve what the database says: the promoted version (other replicas, the CLI) and the running
    experiment."""
    service.registry.sync()
    service.experiments.sync()


@asynccontextmanager
async def lifespan(app: FastAPI):
    service = await run_in_threadpool(start, app.state.settings)
    app.state.service = service
    # what start-up made (modules, the registry, ONNX Runtime sessions) lives as long as the service: frozen,
    # it is left out of the garbage collector's full passes, which otherwise walk ~115k objects (53-61 ms
    # each measured in process on a 2-core machine, every request standing still meanwhile). No collection
    # first: in a process holding more (the test suite) it would walk all of that at every start
    gc.freeze()
    # and the collector runs beside model calls, not when allocations cross its threshold: in a request's
    # own Python work, a young-generation pass (1.2 ms median, up to 3.8 ms; one per ~55 inspections at
    # concurrency 1) landed on the slowest 2% of requests
    gc.disable()
    loop, settings = asyncio.get_running_loop(), service.settings

    def periodic(seconds: float, work, what: str) -> None:  # beside a model call: see Batcher.beside_model
        service.tasks.append(loop.create_task(every(seconds, partial(service.batcher.beside_model, work,
                                                                     BESIDE_WAIT_S), what)))

    periodic(GC_SECONDS, collector(), "collect garbage")
    periodic(settings.sync_seconds, partial(follow, service), "follow promotions")
    periodic(settings.guardrail_seconds, service.experiments.guard, "run the guardrail")
    if service.engine.dialect.name == "sqlite":
        periodic(db.CHECKPOINT_SECONDS, partial(db.checkpoint, service.engine), "checkpoint the SQLite log")
    periodic(settings.monitor_seconds, service.monitor.refresh, "refresh the drift gauges and the status timeline")
    from fabguard.serve.review import publish

    periodic(settings.review_seconds, partial(publish, service.engine, service.metrics), "refresh the review gauges")
    if settings.retain_images_days is not None:
        from fabguard.serve.retention import prune

        periodic(settings.retention_seconds, partial(prune, service.engine, settings), "delete expired images")
    try:
        yield
    finally:
        for task in service.tasks:
            task.cancel()
        await service.batcher.stop()
        service.batcher.in_model.set()  # no model call is coming: after-answer work left runs at once
        await run_in_threadpool(service.after.shutdown, True)
        await run_in_threadpool(service.yield_executor.shutdown, True, cancel_futures=True)
        service.engine.dispose()
        gc.enable()  # an app in a longer-lived process (tests, an embedding) is collected as before
        gc.unfreeze()


def create_app(settings: Settings) -> FastAPI:
    from fabguard import __version__
    from fabguard.serve.routers import active, anomaly, experiments, health, machine_yield, metrics, models

    app = FastAPI(title="fabguard inspection service", version=__version__, lifespan=lifespan,
                  description="Line-side wafer image inspection: score, decide PASS / REVIEW / REJECT, log.")
    app.state.settings = settings
    for router in (anomaly.router, models.router, experiments.router, active.router, machine_yield.router):
        app.include_router(router, prefix="/api/v1")
    app.include_router(health.router)
    app.include_router(metrics.router)
    from fabguard.serve.routers import drift, status

    app.include_router(drift.router, prefix="/api/v1")
    app.include_router(status.router)  # the page (/status) and its JSON (/api/v1/status)
    from fabguard.serve.routers import review

    app.include_router(review.router)  # the page (/review) and its API (/api/v1/review/...)
    _errors(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes,
                       larger={("POST", "/api/v1/models"): max(MAX_ARTIFACT, settings.max_body_bytes)})
    app.add_middleware(Measure)
    return app


def _problem(status: int, detail, headers=None) -> JSONResponse:
    return JSONResponse({"detail": _strict(jsonable_encoder(detail))}, status_code=status, headers=headers)


def _strict(value):
    """``value`` as strict JSON can carry it: a refusal may echo the input, which may hold NaN, infinity
    or a lone surrogate escape (valid JSON text, not Unicode); those are written out as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_strict(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def _errors(app: FastAPI) -> None:
    """Every refusal as a 4xx JSON body naming what is wrong; a database outage as 503."""

    @app.exception_handler(InputError)
    async def input_error(_request, exc: InputError):
        return _problem(next(code for kind, code in STATUS if isinstance(exc, kind)), str(exc))

    @app.exception_handler(UnicodeError)  # a lone surrogate escape in JSON text reaching code that encodes it
    async def not_unicode(_request, _exc: UnicodeError):
        return _problem(422, "the request holds text that is not Unicode (a lone surrogate escape such as \\ud800)")

    @app.exception_handler(NotReady)
    async def not_ready(_request, exc: NotReady):
        return _problem(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(sa.exc.DBAPIError)
    async def database_down(request: Request, exc: sa.exc.DBAPIError):
        if hasattr(request.app.state, "service"):
            request.app.state.service.metrics.log_errors.inc()
        log.warning("database unavailable: %s", str(exc.orig).splitlines()[0] if exc.orig else exc)
        return _problem(503, "the inspection log database is unavailable; retry shortly", {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        return _problem(422, exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return _problem(exc.status_code, exc.detail, getattr(exc, "headers", None))


class Measure:
    """ASGI middleware: request latency by route template and status, and requests in flight (plain
    ASGI: no per-request task, unlike ``@app.middleware``)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        service = getattr(scope.get("app") and scope["app"].state, "service", None)
        if scope["type"] != "http" or service is None:
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def tap(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        service.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, tap)
        finally:
            service.metrics.in_flight.dec()
            service.metrics.request.labels(scope["method"], template(scope), str(status[0])).observe(
                time.perf_counter() - start)


class BodyLimit:
    """ASGI middleware: every request body, JSON and forms too, at most ``limit`` bytes (``larger``: the
    routes that take more, by method and path below the root path). Over it: 413 from the declared
    Content-Length before anything is read (and the connection closed, not drained), or as soon as the body
    streams past it; never buffered whole first. (Starlette's own limiter answers in plain text.)"""

    def __init__(self, app, limit: int, larger: dict[tuple[str, str], int]):
        self.app, self.limit, self.larger = app, limit, larger

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        limit = self.larger.get((scope["method"], path), self.limit)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await _problem(413, f"request body of {declared} bytes; the limit is {limit}",
                                  {"Connection": "close"})(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # raised where the body is read; the app's handler answers
                raise StarletteHTTPException(413, f"request body over the limit of {limit} bytes")
            return message
        await self.app(scope, limited, send)


def template(scope) -> str:
    """The matched route's path template with its router prefix (``/api/v1/inspections/{inspection_id}``):
    a label of bounded cardinality. FastAPI keeps included routers' routes unprefixed in the scope, so the
    prefix is what the request path has before the route's own part."""
    route = scope.get("route")
    if route is None:
        return "unmatched"
    concrete = route.path.format(**scope.get("path_params", {}))
    return scope["path"][: len(scope["path"]) - len(concrete)] + route.path if scope["path"].endswith(concrete) \
        else route.path
