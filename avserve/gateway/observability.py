"""Request ids, structured logs and the per-request access log line.

The request id comes from the client's `X-Request-ID` when it is a sane token, else a new
one; it is echoed in the response header, put into every log record written while the
request runs (a context variable, so it follows the request across awaits) and into error
bodies. Logs are one JSON object per line by default.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = contextvars.ContextVar[str | None]("avserve_request_id", default=None)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_STANDARD_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def current_request_id() -> str | None:
    return _REQUEST_ID.get()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_RECORD_FIELDS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None) or current_request_id()
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_FIELDS and k != "request_id"}
        suffix = " ".join(f"{k}={v}" for k, v in extras.items())
        return f"{line} [{request_id or '-'}]" + (f" {suffix}" if suffix else "")


def configure_logging(level: str = "INFO", log_format: str = "json") -> None:
    """Send avserve's and uvicorn's logs to stderr in one format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    for name in ("avserve", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    # Our own access line (with request id, model, timings) replaces uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it would buffer streaming bodies and break disconnects)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("avserve.gateway.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id_from(scope)
        token = _REQUEST_ID.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        began = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug, not an input problem: log it with its request id and answer in the
            # documented error shape rather than Starlette's plain-text 500.
            self.log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await send_with_id(_internal_error_start(request_id))
                await send_with_id({"type": "http.response.body", "body": _internal_error_body(request_id)})
        finally:
            state = scope.get("state", {})
            self.log.info(
                "%s %s %d",
                scope.get("method"),
                scope.get("path"),
                status,
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - began) * 1000, 2),
                    **state.get("log_fields", {}),
                },
            )
            _REQUEST_ID.reset(token)


def _request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def _internal_error_body(request_id: str) -> bytes:
    body = {"error": {"code": "internal_error", "message": "the server failed to handle this request"}, "request_id": request_id}
    return json.dumps(body).encode()


def _internal_error_start(request_id: str) -> Message:
    length = len(_internal_error_body(request_id))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
    return {"type": "http.response.start", "status": 500, "headers": headers}
