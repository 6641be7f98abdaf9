"""Objects the lifespan creates, handed to routes as FastAPI dependencies.

All are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
dependency per request for what is an attribute read.
"""

from __future__ import annotations

from fastapi import Request

from avserve.backends.base import InferenceBackend

from .classifier import Classifier
from .metrics import GatewayMetrics
from .settings import GatewaySettings


async def get_app_settings(request: Request) -> GatewaySettings:
    """The settings `create_app` was given (or read from the environment)."""
    return request.app.state.settings


async def get_backend(request: Request) -> InferenceBackend:
    return request.app.state.backend


async def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


async def get_classifier(request: Request) -> Classifier:
    return request.app.state.classifier
