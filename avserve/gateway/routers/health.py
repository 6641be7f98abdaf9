"""Liveness and readiness, for load balancers and orchestrators (no API key needed)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends

from avserve.backends.base import InferenceBackend

from ..dependencies import get_app_settings, get_backend
from ..errors import ApiError, openapi_errors
from ..schemas import HealthResponse, ReadyResponse
from ..settings import GatewaySettings

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness: every model is loaded and warmed, and the backend answers",
    responses=openapi_errors(503),
)
async def readyz(
    backend: Annotated[InferenceBackend, Depends(get_backend)],
    settings: Annotated[GatewaySettings, Depends(get_app_settings)],
) -> ReadyResponse:
    try:
        ready = await asyncio.wait_for(backend.ready(), settings.backend_ready_timeout_seconds)
    except TimeoutError:
        ready = False
    except Exception as error:  # a readiness probe reports, it does not crash
        raise ApiError(503, "not_ready", f"the {backend.name} backend is not ready: {error}") from None
    if not ready:
        raise ApiError(
            503, "not_ready", f"the {backend.name} backend is not ready", {"Retry-After": str(settings.retry_after_seconds)}
        )
    return ReadyResponse(status="ready", backend=backend.name, models=sorted(backend.repository.models))
