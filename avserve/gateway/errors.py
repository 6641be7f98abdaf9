"""Every error a client can see: one JSON shape, one stable code per cause.

    {"error": {"code": "corrupt_media", "message": "..."}, "request_id": "..."}

Handlers below turn `ApiError`, media errors, backend errors, FastAPI's validation errors
and Starlette's HTTP errors into that shape. Anything else is a bug: the request-context
middleware logs it with its traceback and answers a generic 500 in the same shape (tests
assert that no input causes one). What is refused before the application sees a request
(malformed HTTP, over-long or too slow headers) is answered in the same shape by the HTTP
protocol (avserve/gateway/server.py); README "Errors" lists the few answers that cannot be JSON.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from avserve.backends.base import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    InferenceFailed,
)
from avserve.media import ErrorCode, MediaError

from .observability import current_request_id

class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable cause, e.g. `corrupt_media`.", examples=["corrupt_media"])
    message: str = Field(description="What went wrong, for a human.")


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str | None = None


class ApiError(Exception):
    """An error response the gateway decides to send."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# Media errors are the upload's fault (4xx), except an unreadable spool file, which is ours.
_MEDIA_STATUS = {
    ErrorCode.FILE_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA: 415,
    ErrorCode.FILE_NOT_READABLE: 500,
}


def media_error(error: MediaError) -> ApiError:
    return ApiError(_MEDIA_STATUS.get(error.code, 422), error.code.value, error.message)


def backend_error(error: BackendError, retry_after_seconds: int) -> ApiError:
    if isinstance(error, BackendOverloaded):
        retry = max(1, round(error.retry_after_seconds))
        return ApiError(429, error.code, error.message, {"Retry-After": str(retry)})
    if isinstance(error, BackendUnavailable):
        return ApiError(503, error.code, error.message, {"Retry-After": str(retry_after_seconds)})
    if isinstance(error, BackendTimeout):
        return ApiError(504, error.code, error.message)
    if isinstance(error, InferenceFailed):
        return ApiError(502, error.code, error.message)
    return ApiError(502, error.code, error.message)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message), request_id=current_request_id())
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def openapi_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting error statuses with the error model."""
    descriptions = {
        400: "Malformed HTTP (`invalid_http_request`, `invalid_content_length`): answered by the HTTP layer.",
        408: "The request line and headers took longer than the header timeout (`request_header_timeout`).",
        431: "Request headers (`request_headers_too_large`) or a multipart part's headers (`part_header_too_large`) too large.",
        401: "No API key was sent (`missing_api_key`).",
        403: "The API key is not valid (`invalid_api_key`).",
        404: "No such model or family (`unknown_model`).",
        413: "The upload exceeds the size limit (`file_too_large`).",
        415: "Not an audio or video file (`unsupported_media_type`, `unsupported_media`).",
        422: (
            "Invalid request or unusable media (`invalid_request`, a media error code such as `corrupt_media`, "
            "`too_many_bad_packets`, or the decoding worker's limits: `decoder_crashed`, `decode_memory_limit`, "
            "`decode_cpu_limit`)."
        ),
        429: (
            "Shed under load, at once and before the upload is read: the decoders' queue is full "
            "(`media_queue_full`), the request could not finish by its deadline (`deadline_unreachable`), or "
            "too many requests are in progress (`overloaded`); see Retry-After."
        ),
        502: "The model failed on this input (`inference_failed`).",
        503: "The backend or the media workers cannot serve now (`backend_unavailable`, `not_ready`, `media_workers_unavailable`).",
        504: "The request's deadline passed (`deadline_exceeded`).",
    }
    return {status: {"model": ErrorResponse, "description": descriptions.get(status, "Error")} for status in statuses}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()))
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(error.status_code, f"http_{error.status_code}")
        return error_response(error.status_code, code, str(error.detail), dict(error.headers or {}))
