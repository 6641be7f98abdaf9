"""Optional API keys: `X-API-Key: <key>` or `Authorization: Bearer <key>`.

With no keys configured every request passes. Keys are compared in constant time, and
against every configured key, so neither timing nor the number of keys leaks which
prefix or which key was close.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError
from .settings import GatewaySettings, get_settings

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
    settings: Annotated[GatewaySettings, Depends(get_settings)],
    header_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
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
