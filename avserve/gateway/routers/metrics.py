"""GET /metrics in the Prometheus text format (no API key: scrapers run inside the network)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..dependencies import get_metrics
from ..metrics import GatewayMetrics

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition format."}},
)
async def metrics(gateway_metrics: Annotated[GatewayMetrics, Depends(get_metrics)]) -> Response:
    return Response(generate_latest(gateway_metrics.registry), media_type=CONTENT_TYPE_LATEST)
