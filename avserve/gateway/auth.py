"""Optional API keys: `X-API-Key: <key>` or `Authorization: Bearer <key>`.

With no keys configured every request passes. Keys are compared in constant time, and
against every configured key, so neither timing nor the number of keys leaks which
prefix or which key was close.

With keys, the operator paths (`/metrics`, `/docs`, `/redoc`, `/openapi.json`) need one too
(`OperatorAccessMiddleware`); there a key may also come as the password of HTTP Basic
credentials, which a browser asks for and then sends with the docs' own requests. With
`AVSERVE_METRICS_PORT`, `/metrics` moves to that listener (no credentials: keep the port on the
internal network, as Triton's metrics port) and the main port answers it 404.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError, error_response
from .settings import GatewaySettings

METRICS_PATH = "/metrics"

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key, when keys are configured.")
_bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token.")


def key_is_valid(candidate: str, settings: GatewaySettings) -> bool:
    given = candidate.encode("utf-8")
    valid = False
    for key in settings.api_keys:
        # `|` and not `or`: compare against every key, whichever matches.
        valid |= hmac.compare_digest(given, key.get_secret_value().encode("utf-8"))
    return valid


async def require_api_key(
    request: Request,
    header_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    settings: GatewaySettings = request.app.state.settings
    if not settings.api_keys:
        return
    candidate = header_key or (bearer.credentials if bearer is not None else None)
    if not candidate:
        raise ApiError(
            401, "missing_api_key", "send an API key in X-API-Key or Authorization: Bearer",
            {"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    if not key_is_valid(candidate, settings):
        raise ApiError(403, "invalid_api_key", "the API key is not valid")


# ---- operator paths: /metrics and the docs ----------------------------------------------------


def _credential(headers: Headers) -> str | None:
    """An API key from X-API-Key, `Authorization: Bearer`, or the password of `Authorization: Basic`."""
    if key := headers.get("x-api-key"):
        return key
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def operator_access(scope: Scope, settings: GatewaySettings, docs_paths: frozenset[str]) -> ApiError | None:
    """Why this request for an operator path is refused, or None (also for every other path)."""
    path = scope["path"]
    server = scope.get("server") or (None, None)
    if settings.metrics_port is not None and server[1] == settings.metrics_port:
        if path == METRICS_PATH:
            return None
        return ApiError(404, "not_found", f"the metrics listener serves only GET {METRICS_PATH}")
    if path == METRICS_PATH and settings.metrics_port is not None:
        return ApiError(404, "not_found", f"{METRICS_PATH} is served on the metrics port ({settings.metrics_port})")
    if not settings.api_keys or (path != METRICS_PATH and path not in docs_paths):
        return None
    candidate = _credential(Headers(scope=scope))
    if not candidate:
        # A browser asks for Basic credentials (and sends them with /openapi.json); scrapers send a bearer token.
        challenge = "Bearer" if path == METRICS_PATH else 'Basic realm="avserve", charset="UTF-8"'
        return ApiError(
            401, "missing_api_key",
            "send an API key in X-API-Key, Authorization: Bearer, or as the password of Authorization: Basic",
            {"WWW-Authenticate": challenge},
        )  # fmt: skip
    if not key_is_valid(candidate, settings):
        return ApiError(403, "invalid_api_key", "the API key is not valid")
    return None


class OperatorAccessMiddleware:
    """Guards /metrics and the OpenAPI docs (see the module docstring); pure ASGI, inside the
    request-context middleware so refusals carry the request id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._docs_paths: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            application = scope["app"]  # the FastAPI app (Starlette sets it before any middleware)
            settings = application.state.settings
            if self._docs_paths is None:
                urls = (application.docs_url, application.redoc_url, application.openapi_url)
                oauth = application.swagger_ui_oauth2_redirect_url if application.docs_url else None
                self._docs_paths = frozenset(url for url in (*urls, oauth) if url)
            refusal = operator_access(scope, settings, self._docs_paths)
            if refusal is not None:
                response = error_response(refusal.status, refusal.code, refusal.message, refusal.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
