"""GET /metrics in the Prometheus text format.

Who may read it is decided before the route (auth.OperatorAccessMiddleware): anyone when no API
keys are configured; with keys, a key (X-API-Key, Bearer or Basic password); with
AVSERVE_METRICS_PORT, anyone reaching that port, and nobody on the main port (404).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..dependencies import get_metrics
from ..errors import openapi_errors
from ..metrics import GatewayMetrics

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition format."},
        **openapi_errors(401, 403),
    },
)
async def metrics(gateway_metrics: Annotated[GatewayMetrics, Depends(get_metrics)]) -> Response:
    return Response(generate_latest(gateway_metrics.registry), media_type=CONTENT_TYPE_LATEST)
