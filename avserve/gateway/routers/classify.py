"""POST /classify: one clip in, labels out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from avserve.backends.base import InferenceBackend
from avserve.media.video import Sampling

from ..admission import Refusal, Ticket
from ..auth import require_api_key
from ..classifier import Classifier, ClassifyParams
from ..dependencies import get_app_settings, get_backend, get_classifier, get_metrics, get_response_cache
from ..errors import ApiError, openapi_errors
from ..metrics import GatewayMetrics
from ..response_cache import ResponseCache
from ..routing import ModalityChoice, Route, default_family
from ..schemas import ClassifyResponse
from ..settings import GatewaySettings
from ..upload import UPLOAD_FIELD, spooled_upload

router = APIRouter(tags=["classify"])

_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [UPLOAD_FIELD],
                "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary", "description": "The clip."}},
            }
        },
        "video/*": {"schema": {"type": "string", "format": "binary"}},
        "audio/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Classify an audio/video clip",
    description=(
        "Send the clip as multipart field `file`, or as the raw body with an `audio/*` or `video/*` content type. "
        "The served model is chosen from the streams that decode: audio+video, audio-only or video-only. "
        "With the response cache on (`AVSERVE_RESPONSE_CACHE_BYTES`), the same clip asked the same question "
        "is answered from memory (`cache: \"hit\"`, header `X-Cache: hit`); `Cache-Control: no-cache` skips "
        "the lookup, `no-store` the cache altogether."
    ),
    responses=openapi_errors(400, 401, 403, 404, 408, 413, 415, 422, 429, 431, 502, 503, 504),
    dependencies=[Depends(require_api_key)],
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def classify(
    request: Request,
    http_response: Response,
    settings: Annotated[GatewaySettings, Depends(get_app_settings)],
    backend: Annotated[InferenceBackend, Depends(get_backend)],
    classifier: Annotated[Classifier, Depends(get_classifier)],
    metrics: Annotated[GatewayMetrics, Depends(get_metrics)],
    cache: Annotated[ResponseCache, Depends(get_response_cache)],
    model: Annotated[str | None, Query(description="Model family; default: the server's default.")] = None,
    modality: Annotated[
        ModalityChoice, Query(description="`auto` routes on the streams present; `av`/`audio`/`video` force a route.")
    ] = "auto",
    top_k: Annotated[int | None, Query(ge=1, le=1000, description="Labels to return (default from settings).")] = None,
    start: Annotated[float, Query(ge=0, le=1e7, description="Window start, seconds into the clip.")] = 0.0,
    duration: Annotated[
        float | None,
        Query(gt=0, le=1e7, description="Window length, seconds; longer than the model's clip = several windows, averaged."),
    ] = None,
    timeout: Annotated[
        float | None, Query(gt=0, description="Deadline in seconds (at most the server's request timeout).")
    ] = None,
    sampling: Annotated[
        Sampling | None,
        Query(description="Frame choice: `exact` (the frame on screen at each sample time) or `fast` (the nearest "
              "keyframe within a segment: much less decoding on long-GOP video). Default from settings."),
    ] = None,
) -> ClassifyResponse:
    began = time.perf_counter()
    arrival = time.monotonic()
    state = request.app.state
    family = model or default_family(backend.repository, settings.default_model) or ""
    labels = {"model": family or "unknown", "route": "none"}
    log_fields = request.scope.setdefault("state", {}).setdefault("log_fields", {})

    def record(status: int, code: str) -> None:
        metrics.requests.labels(labels["model"], labels["route"], str(status), code).inc()
        metrics.stage_seconds.labels("total", labels["model"], labels["route"]).observe(time.perf_counter() - began)
        log_fields.update(model=labels["model"], route=labels["route"], code=code)

    families = backend.repository.families
    if not families:
        # The Triton backend learns its models from the server: none yet means it is away.
        record(503, "backend_unavailable")
        raise ApiError(
            503, "backend_unavailable", "no model is available yet; the backend is starting or unreachable",
            {"Retry-After": str(settings.retry_after_seconds)},
        )  # fmt: skip
    if family not in families:
        labels["model"] = "unknown"  # a label value from the client would be unbounded cardinality
        record(404, "unknown_model")
        raise ApiError(404, "unknown_model", f"no model family {family!r} (served: {', '.join(families) or 'none'})")
    if state.in_flight >= settings.max_in_flight_requests:
        record(429, "overloaded")
        raise ApiError(
            429, "overloaded", f"more than {settings.max_in_flight_requests} requests in progress; retry later",
            {"Retry-After": str(settings.retry_after_seconds)},
        )  # fmt: skip
    seconds = min(timeout or settings.request_timeout_seconds, settings.request_timeout_seconds)

    def admit() -> Ticket:
        ticket = state.admission.admit(remaining=seconds - (time.monotonic() - arrival))
        if isinstance(ticket, Refusal):
            raise ApiError(429, ticket.code, ticket.message, {"Retry-After": str(ticket.retry_after)})
        return ticket

    cache_policy = cache.policy(request.headers.get("cache-control"), request.headers.get("pragma"))
    if cache.enabled and not cache_policy.lookup:
        cache.count_bypass()
    ticket: Ticket | None = None
    if not cache_policy.active:
        # Refuse now, before the upload is read, what the media workers could not start in time.
        # (With the cache on, only after the lookup: a hit needs no media worker.)
        try:
            ticket = admit()
        except ApiError as error:
            record(error.status, error.code)
            raise

    def on_route(route: Route) -> None:
        labels.update(model=route.spec.name, route=route.label)

    params = ClassifyParams(
        family=family, modality=modality, top_k=top_k or settings.default_top_k, start=start, duration=duration,
        sampling=sampling or settings.frame_sampling,
    )
    state.in_flight += 1
    metrics.in_flight.inc()
    try:
        try:
            async with asyncio.timeout(seconds):
                async with spooled_upload(
                    request, max_bytes=settings.max_upload_bytes, directory=settings.upload_dir,
                    digest=cache_policy.active,
                ) as upload:  # fmt: skip
                    metrics.upload_bytes.observe(upload.size)
                    metrics.upload_bytes_total.inc(upload.size)
                    log_fields["upload_bytes"] = upload.size
                    key = None
                    if cache_policy.active:
                        assert upload.sha256 is not None
                        key = cache.key(upload.sha256, upload.path.suffix, backend.name, backend.repository, params)
                        cached = cache.get(key) if cache_policy.lookup else None
                        if cached is not None:
                            labels.update(model=cached.model, route=cached.route)
                            response = cached.answer(
                                request.state.request_id, upload_seconds=upload.seconds,
                                total_seconds=time.perf_counter() - began,
                            )  # fmt: skip
                            return _answered(response, http_response, metrics, labels, log_fields, record)
                        ticket = admit()
                    outcome = await classifier.classify(
                        upload, params, deadline=arrival + seconds, began=began,
                        request_id=request.state.request_id, on_route=on_route, ticket=ticket,
                    )  # fmt: skip
        except TimeoutError:
            raise ApiError(504, "deadline_exceeded", f"the request took longer than its deadline of {seconds:g} s") from None
    except ApiError as error:
        record(error.status, error.code)
        raise
    finally:
        if ticket is not None:
            ticket.release()  # a no-op when the media stage reported in
        state.in_flight -= 1
        metrics.in_flight.dec()

    response = outcome.response
    if key is not None and cache_policy.store:
        # Only answers get here (errors were raised above); a hit replaces the request id.
        cache.put(key, response, model=labels["model"], route=labels["route"])
    if cache.enabled:
        response.cache = "miss" if cache_policy.lookup else "bypass"
    return _answered(response, http_response, metrics, labels, log_fields, record)


def _answered(
    response: ClassifyResponse, http_response: Response, metrics: GatewayMetrics, labels: dict[str, str],
    log_fields: dict, record: Callable[[int, str], None],
) -> ClassifyResponse:
    """The 200's metrics and log fields; a cache hit's probe/decode/inference were not run and
    stay out of those stages' latency histograms."""
    for stage, milliseconds in response.timings_ms.model_dump().items():
        ran = stage == "upload" or response.cache != "hit"
        if stage != "total" and ran:
            metrics.stage_seconds.labels(stage, labels["model"], labels["route"]).observe(milliseconds / 1000)
    if response.cache is not None:
        http_response.headers["X-Cache"] = response.cache
        log_fields["cache"] = response.cache
    record(200, "ok")
    log_fields["timings_ms"] = response.timings_ms.model_dump()
    return response
