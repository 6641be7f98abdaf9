"""The FastAPI application: `create_app()` wires settings, backend, routers and middleware.

    uvicorn --factory avserve.gateway.app:create_app      # settings from AVSERVE_* variables
    app = create_app(GatewaySettings(repository=...))     # tests, `avserve serve`

The backend is created and started in the lifespan, so importing the app costs nothing
and every worker process gets its own sessions or gRPC channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI

from avserve.backends import BackendUnavailable, InferenceBackend, create_backend
from avserve.media.workers import MediaWorkers

from .admission import MediaAdmission
from .auth import OperatorAccessMiddleware
from .classifier import Classifier
from .errors import install_error_handlers
from .metrics import LIFESPAN_STATE_KEY, GatewayMetrics
from .observability import RequestContextMiddleware
from .response_cache import ResponseCache
from .routers import classify, health, metrics, models
from .settings import MiB, GatewaySettings, get_settings

log = logging.getLogger("avserve.gateway")
# How often a gateway whose backend could not start (Triton down) tries again.
START_RETRY_SECONDS = 1.0


def resolve_settings(app: FastAPI) -> GatewaySettings:
    """The settings routes see (dependencies.get_app_settings): `create_app(settings)`'s or the environment's."""
    return app.state.settings


def build_backend(settings: GatewaySettings) -> InferenceBackend:
    if settings.backend == "triton":
        return create_backend("triton", url=settings.triton_url, settings=settings.triton_settings())
    return create_backend("embedded", repository_dir=settings.repository, settings=settings.embedded_settings())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings = resolve_settings(app)
    backend = build_backend(settings)
    gateway_metrics = GatewayMetrics()
    gateway_metrics.watch_backend(backend)
    media_workers = MediaWorkers(
        settings.decode_workers, memory_bytes=settings.decode_memory_mb * MiB, cpu_seconds=settings.decode_cpu_seconds
    )
    media_workers.start()
    await media_workers.warm_up()
    admission = MediaAdmission(
        settings.decode_workers, queue_factor=settings.media_queue_factor, latency_target=settings.latency_target_seconds
    )
    gateway_metrics.watch_media(media_workers, admission)
    response_cache = ResponseCache(settings.response_cache_bytes, ttl_seconds=settings.response_cache_ttl_seconds)
    gateway_metrics.watch_cache(response_cache)
    app.state.backend = backend
    app.state.metrics = gateway_metrics
    app.state.in_flight = 0
    app.state.admission = admission
    app.state.response_cache = response_cache
    app.state.classifier = Classifier(
        backend, media_workers, gateway_metrics, settings.media_limits,
        max_windows=settings.max_windows, retry_after_seconds=settings.retry_after_seconds,
    )  # fmt: skip
    retry: asyncio.Task[None] | None = None
    if settings.backend == "triton":
        # Triton may come up after the gateway (or restart under it): listen at once, answer
        # 503 and not-ready until the server is there, and connect in the background.
        retry = asyncio.create_task(_start_when_available(backend))
    else:
        await backend.start()  # local sessions: a broken repository should stop the start-up
    log.info("gateway serving with the %s backend", backend.name)
    try:
        # Lifespan state: the server copies it into every request's scope and hands the dict to
        # its HTTP protocol (uvicorn's `app_state`), which counts the requests it refuses itself.
        yield {LIFESPAN_STATE_KEY: gateway_metrics}
    finally:
        if retry is not None:
            retry.cancel()
            with suppress(asyncio.CancelledError):
                await retry
        await backend.close()
        media_workers.close()


async def _start_when_available(backend: InferenceBackend) -> None:
    while True:
        try:
            await backend.start()
        except BackendUnavailable as error:
            log.warning("backend %s not available yet: %s; retrying", backend.name, error)
            await asyncio.sleep(START_RETRY_SECONDS)
            continue
        log.info("backend %s started", backend.name)
        return


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    app = FastAPI(
        title="avserve",
        summary="Audio-visual classification: upload a clip, get labels.",
        version="0.1.0",
        lifespan=lifespan,
    )
    # Not a `dependency_overrides` entry: with any override, FastAPI re-inspects every
    # dependency on every request (see dependencies.py).
    app.state.settings = settings if settings is not None else get_settings()
    install_error_handlers(app)
    app.add_middleware(OperatorAccessMiddleware)  # /metrics and the docs: API key or metrics port
    app.add_middleware(RequestContextMiddleware)  # outermost: request id, access log
    app.include_router(classify.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    return app
