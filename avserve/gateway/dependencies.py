"""Objects the lifespan creates, handed to routes as FastAPI dependencies."""

from __future__ import annotations

from fastapi import Request

from avserve.backends.base import InferenceBackend

from .classifier import Classifier
from .metrics import GatewayMetrics
from .response_cache import ResponseCache


def get_backend(request: Request) -> InferenceBackend:
    return request.app.state.backend


def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


def get_classifier(request: Request) -> Classifier:
    return request.app.state.classifier


def get_response_cache(request: Request) -> ResponseCache:
    return request.app.state.response_cache
