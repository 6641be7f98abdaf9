"""The HTTP server under the gateway: uvicorn, with what its HTTP/1.1 layer lacks.

    avserve serve                                   # runs `run_gateway` below
    uvicorn --factory avserve.gateway.app:create_app --http avserve.gateway.server:GatewayHttpProtocol --ws none

uvicorn (0.54) parses requests with httptools (llhttp) and answers what the parser refuses
itself, in plain text. Three things are missing there, and nothing in front of the parser (an
ASGI middleware sees a request only once its headers are complete) can supply them:

1. **A header timeout.** uvicorn has none (its issue #157 has asked for one since 2018); its
   keep-alive timer is cancelled by every byte received, so a client sending its headers at
   100 B/s holds a connection for ever. `GatewayHttpProtocol` gives every request head (request
   line + headers) `header_timeout` seconds: from the connection's opening for the first
   request, from its first byte for every later (keep-alive or pipelined) one. A head still
   incomplete then gets `408 request_header_timeout`; a connection on which nothing arrived is
   just closed. The clock does not run while the server itself is busy with an earlier request
   on the connection, nor after the head is complete (the body is bounded by the request
   deadline, `AVSERVE_REQUEST_TIMEOUT_SECONDS`). The rest of a body the application did not read
   (an early 413) is discarded for at most `header_timeout` too.
2. **A bound on the head's size.** llhttp accepts request heads of any size (a 2 MB header is
   buffered whole); past `max_header_bytes` the answer is `431 request_headers_too_large`.
3. **JSON for protocol errors.** What the parser refuses (a malformed or overflowing
   Content-Length, a bad request line, invalid header bytes, a broken chunk size) gets the
   gateway's error shape: `400 invalid_content_length` or `400 invalid_http_request`, with the
   parser's reason as the message and an `x-request-id`.

Every such refusal is counted in the application's metrics, `avserve_http_rejections_total{status,
code}` on its /metrics: the app's lifespan yields its `GatewayMetrics` as ASGI lifespan state
(`metrics.LIFESPAN_STATE_KEY`), and uvicorn hands that very dict to each connection's protocol
as `app_state`. (Under a server or lifespan without state the refusals are only logged.)

Error answers carry `connection: close`; the connection is then half-closed and drained for a
moment (`LINGER_SECONDS`) before it is closed, so a client still sending reads the answer instead
of a TCP reset.

Why this and not another server: hypercorn's `read_timeout` bounds each read, and its keep-alive
timer is re-armed by every read, so a trickle defeats both; granian (hyper's
`--http1-header-read-timeout`) has a real header timeout, but it would replace the server, the
test harness that runs uvicorn in a thread, and leave protocol errors to hyper's bodiless
responses; a reverse proxy (nginx `client_header_timeout`) protects only a deployment that has
one, not `avserve serve`. So: uvicorn's httptools protocol, extended in this one class.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import threading
import uuid
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .metrics import LIFESPAN_STATE_KEY
from .settings import GatewaySettings, get_settings

log = logging.getLogger("avserve.gateway.http")

# After an error answer: how long a client that is still sending may go on before the
# connection is closed under it (the answer is already on its way; see the module docstring).
LINGER_SECONDS = 2.0


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head past `max_header_bytes`."""


class GatewayServerConfig(uvicorn.Config):
    """uvicorn's Config plus what `GatewayHttpProtocol` reads."""

    def __init__(self, app: Any, *, header_timeout: float, max_header_bytes: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, a head size bound and JSON errors."""

    def __init__(self, config: uvicorn.Config, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if isinstance(config, GatewayServerConfig):
            self.header_timeout, self.max_header_bytes = config.header_timeout, config.max_header_bytes
        else:  # a plain uvicorn (`uvicorn --http avserve.gateway.server:GatewayHttpProtocol`): the environment
            settings = get_settings()
            self.header_timeout, self.max_header_bytes = settings.header_timeout_seconds, settings.max_header_bytes
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = False  # bytes of a request head have arrived, the head is not complete
        self._head_bytes = 0  # raw bytes of an incomplete head (llhttp buffers a partial header)
        self._head_size = 0  # the target and headers parsed so far
        self._head_too_large = False
        self._discarding = False  # the answered request's body is still arriving
        self._rejected = False  # an error answer was sent: ignore whatever else arrives

    # ---- the header clock ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # the first request's head: from the connection's opening

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _busy(self) -> bool:
        """Is an earlier request on this connection still being answered (pipelining)?"""
        return self.cycle is not None and not self.cycle.response_complete

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._in_head and self._busy():
            self._arm_head_timer()  # the client waits for us, not we for it
        elif self._in_head:
            log.info("request head incomplete after %g s: closing the connection", self.header_timeout)
            self._send_error(
                408, "request_header_timeout",
                f"the request line and headers did not arrive within {self.header_timeout:g} s",
            )  # fmt: skip
        else:
            self.transport.close()  # nothing of a request arrived (or an answered body trickles on)

    # ---- parser callbacks (httptools calls these on the protocol) ------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._head_size = True, 0, 0
        self._unset_keepalive_if_required()  # armed by a body's end earlier in the same chunk
        self._arm_head_timer()  # a later request's head: from its first byte

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.max_header_bytes:
            self._head_too_large = True
            raise _HeadTooLarge  # httptools stops parsing and raises HttpParserCallbackError

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._discarding:  # the unread body is over: now idle, as after any answered request
            self._discarding = False
            self._disarm_head_timer()
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle  # after a pipelined request was started, that one: not answered yet
        if cycle is not None and cycle.response_complete and cycle.more_body and not self.transport.is_closing():
            self._discarding = True  # answered before its body was read: bound the discarding
            self._arm_head_timer()

    # ---- bytes in ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # as uvicorn: served as plain HTTP when ws is "none"
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
                # llhttp stays paused after an Upgrade head: nothing more can be read from this
                # connection, so it closes after this answer instead of idling for ever.
                self._rejected = True
                if self.cycle is not None:
                    self.cycle.keep_alive = False
        except httptools.HttpParserError as error:
            if self._head_too_large:
                self._reject_large_head()
                return
            reason = str(error) or type(error).__name__
            code = "invalid_content_length" if "Content-Length" in reason else "invalid_http_request"
            log.info("malformed HTTP request: %s", reason)
            self._send_error(400, code, f"malformed HTTP request: {reason}")
            return
        if self._in_head:
            # Every byte of a chunk that leaves the head incomplete is head (at most the tail
            # of a previous pipelined body in the same chunk is counted too).
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._reject_large_head()

    def _reject_large_head(self) -> None:
        self._send_error(
            431, "request_headers_too_large", f"the request line and headers exceed {self.max_header_bytes} bytes"
        )

    # ---- error answers -------------------------------------------------------------------------

    def _count_rejection(self, status: int, code: str) -> None:
        """Count the refusal in the app's metrics (the lifespan state; see the module docstring)."""
        metrics = self.app_state.get(LIFESPAN_STATE_KEY)
        if metrics is not None:
            metrics.http_rejected(status, code)

    def send_400_response(self, msg: str) -> None:  # anything in uvicorn that still calls it
        self._send_error(400, "invalid_http_request", msg)

    def _send_error(self, status: int, code: str, message: str) -> None:
        """Answer `status` in the gateway's error shape and close, if an answer can still be written."""
        self._rejected = True
        self._count_rejection(status, code)
        self._disarm_head_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application is on this connection's request: it must not write any more. An
            # answer can replace its own only if none has begun and the error is in its body (a
            # malformed pipelined head would have its error taken for the earlier request's answer).
            writable = not cycle.response_started and not self.pipeline and not self._in_head
            cycle.disconnected = True
            cycle.message_event.set()
            if not writable:  # half a response is out: a second one would corrupt it
                self.transport.close()
                return
        if self.transport.is_closing():
            return
        request_id = uuid.uuid4().hex
        body = json.dumps({"error": {"code": code, "message": message}, "request_id": request_id}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: " + request_id.encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        log.info("%d %s", status, code, extra={"status": status, "code": code, "request_id": request_id})
        if self.transport.can_write_eof():
            self.transport.write_eof()  # FIN after the answer; reads go on (ignored) for a moment
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


# ---- running it ---------------------------------------------------------------------------------


def server_config(app: Any, settings: GatewaySettings, *, host: str, port: int, **kwargs: Any) -> GatewayServerConfig:
    """The uvicorn configuration `avserve serve` runs the gateway with."""
    options: dict[str, Any] = {
        "http": GatewayHttpProtocol,
        "ws": "none",  # no WebSocket routes: an Upgrade request is answered as plain HTTP, in JSON
        "log_config": None,
        "log_level": settings.log_level.lower(),
        "access_log": False,  # the request-context middleware writes the access line
        "timeout_graceful_shutdown": 10,
        **kwargs,
    }
    return GatewayServerConfig(
        app, host=host, port=port, header_timeout=settings.header_timeout_seconds,
        max_header_bytes=settings.max_header_bytes, **options,
    )  # fmt: skip


def bind_listeners(config: uvicorn.Config, settings: GatewaySettings) -> list[socket.socket]:
    """The gateway's socket, and the metrics listener's when `AVSERVE_METRICS_PORT` is set."""
    sockets = [config.bind_socket()]
    if settings.metrics_port is not None:
        metrics = uvicorn.Config(config.app, host=config.host, port=settings.metrics_port, log_config=None)
        sockets.append(metrics.bind_socket())
        log.info("metrics listener on port %d (GET /metrics only, no credentials)", settings.metrics_port)
    return sockets


def run_gateway(app: Any, settings: GatewaySettings, *, host: str, port: int) -> bool:
    """Serve until SIGINT/SIGTERM; False if the server did not start (the lifespan failed)."""
    config = server_config(app, settings, host=host, port=port)
    server = uvicorn.Server(config)
    sockets = bind_listeners(config, settings)
    # uvicorn shuts down gracefully on SIGINT / SIGTERM, then raises the signal again with the
    # handlers it found: a KeyboardInterrupt for SIGINT (uvicorn.run() swallows it, so do we),
    # and for SIGTERM the default action, which would end a clean shutdown as "killed". Our
    # handler turns that into a normal return: exit 0 after a graceful stop either way.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stopped) if main_thread else None
    try:
        server.run(sockets=sockets)
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        for sock in sockets:
            sock.close()
    return server.started


class _Stopped(Exception):
    """SIGTERM, raised again by uvicorn after its graceful shutdown."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stopped
