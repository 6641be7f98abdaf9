"""Objects the app holds, handed to routes as FastAPI dependencies.

All are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
dependency per request for what is an attribute read. And the settings are the app's
(`app.state.settings`), not a `dependency_overrides` entry: with any override registered, FastAPI
re-inspects every dependency's signature on every request. Together these were most of the CPU a
request costs the gateway before its own work (loadtests/bench_cache.py: a cache hit).
"""

from __future__ import annotations

from fastapi import Request

from avserve.backends.base import InferenceBackend

from .classifier import Classifier
from .metrics import GatewayMetrics
from .response_cache import ResponseCache
from .settings import GatewaySettings


async def get_app_settings(request: Request) -> GatewaySettings:
    """The app's settings: `create_app(settings)`'s, else the environment's (read by create_app)."""
    return request.app.state.settings


async def get_backend(request: Request) -> InferenceBackend:
    return request.app.state.backend


async def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


async def get_classifier(request: Request) -> Classifier:
    return request.app.state.classifier


async def get_response_cache(request: Request) -> ResponseCache:
    return request.app.state.response_cache
