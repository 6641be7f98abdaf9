"""The gateway's HTTP layer (avserve/gateway/server.py) under the real `avserve serve`.

One gateway process serves every test here: API keys on, a metrics port, and a short header
timeout so the slow-header tests take seconds. Requests go over raw sockets wherever the point
is bytes a well-behaved client would never send.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from gateway_helpers import FAMILY, assert_error, free_port, wait_until_no_uploads
from prometheus_client.parser import text_string_to_metric_families

KEY = "http-layer-key"
HEADER_TIMEOUT = 1.5
MAX_HEADER_BYTES = 16 * 1024


@dataclass
class ServedGateway:
    url: str
    port: int
    metrics_port: int
    upload_dir: Path
    process: subprocess.Popen

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, headers={"X-API-Key": KEY}, **kwargs)

    def leftover_uploads(self) -> list[Path]:
        return sorted(self.upload_dir.iterdir())


@pytest.fixture(scope="module")
def served(serving_repository, tmp_path_factory) -> ServedGateway:
    port, metrics_port = free_port(), free_port()
    upload_dir = tmp_path_factory.mktemp("http_layer_uploads")
    env = {
        **os.environ,
        "AVSERVE_API_KEYS": KEY,
        "AVSERVE_DEFAULT_MODEL": FAMILY,
        "AVSERVE_UPLOAD_DIR": str(upload_dir),
        "AVSERVE_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "AVSERVE_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "AVSERVE_LOG_FORMAT": "text",
        "AVSERVE_LOG_LEVEL": "WARNING",
    }
    avserve = Path(sys.executable).parent / "avserve"
    command = [
        str(avserve), "serve", "--repository", str(serving_repository), "--port", str(port),
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("http_layer_log") / "gateway.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    gateway = ServedGateway(f"http://127.0.0.1:{port}", port, metrics_port, upload_dir, process)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"avserve serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{gateway.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"avserve serve did not become ready:\n{log.read_text()}")
            time.sleep(0.2)
        yield gateway
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# ---- raw HTTP ------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after it

    def json(self) -> dict:
        return json.loads(self.body)


_UNREAD: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()  # pipelined answers


def read_response(sock: socket.socket, timeout: float = 10.0) -> RawResponse:
    """One HTTP/1.1 response with a Content-Length (all the gateway sends), then whether EOF follows."""
    sock.settimeout(timeout)
    data = _UNREAD.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    if len(body) > length:
        _UNREAD[sock] = body[length:]
    closed = False
    if headers.get("connection") == "close":
        try:
            closed = sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            closed = True
    return RawResponse(status, headers, body[:length], closed)


def exchange(gateway: ServedGateway, data: bytes, port: int | None = None) -> RawResponse:
    with socket.create_connection(("127.0.0.1", port or gateway.port), timeout=10) as sock:
        sock.sendall(data)
        return read_response(sock)


def assert_json_error(response: RawResponse, status: int, code: str) -> dict:
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"], body
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", f"X-API-Key: {KEY}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ---- protocol errors are JSON -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        (request("POST", "/classify", "Content-Type: video/mp4", "Content-Length: abc"), 400, "invalid_content_length"),
        (request("POST", "/classify", "Content-Type: video/mp4", "Content-Length: -1"), 400, "invalid_content_length"),
        (request("POST", "/classify", "Content-Length: 99999999999999999999999"), 400, "invalid_content_length"),
        (request("POST", "/classify", "Content-Length: 1", "Content-Length: 2"), 400, "invalid_content_length"),
        (request("POST", "/classify", "Content-Length: 4", "Transfer-Encoding: chunked"), 400, "invalid_content_length"),
        (b"GARBAGE\r\n\r\n", 400, "invalid_http_request"),
        (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 400, "invalid_http_request"),
        (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_http_request"),
        (b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "invalid_http_request"),
        (b"GET /healthz HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400, "invalid_http_request"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "invalid_http_request"),  # h2c prior knowledge
        (request("GET", "/healthz", "X-Big: " + "a" * MAX_HEADER_BYTES), 431, "request_headers_too_large"),
        (request("GET", "/" + "a" * MAX_HEADER_BYTES), 431, "request_headers_too_large"),
        (request("GET", "/healthz", *[f"X-{i}: {'b' * 1000}" for i in range(20)]), 431, "request_headers_too_large"),
    ],
    ids=[
        "content-length-not-a-number", "content-length-negative", "content-length-overflow", "content-length-twice",
        "content-length-and-chunked", "bad-request-line", "bad-version", "space-in-target", "bad-header-name",
        "control-char-in-value", "h2c-preface", "one-huge-header", "huge-target", "many-headers",
    ],
)  # fmt: skip
def test_malformed_http_gets_the_json_error_shape(served, head, status, code):
    response = exchange(served, head)
    assert_json_error(response, status, code)
    assert response.headers["connection"] == "close" and response.closed


def test_a_valid_huge_content_length_is_413_from_the_application(served):
    head = request("POST", "/classify", "Content-Type: video/mp4", "Content-Length: 18446744073709551615")
    assert_json_error(exchange(served, head), 413, "file_too_large")


def test_headers_just_under_the_limit_are_served(served):
    response = exchange(served, request("GET", "/healthz", "X-Big: " + "a" * (MAX_HEADER_BYTES - 512)))
    assert response.status == 200 and response.json() == {"status": "ok"}


def test_a_huge_head_sent_slowly_is_cut_at_the_limit_not_buffered(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        answer = None
        for _ in range(4 * MAX_HEADER_BYTES // 4096):
            try:
                sock.sendall(b"a" * 4096)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.01)
        answer = read_response(sock)
    assert_json_error(answer, 431, "request_headers_too_large")


def test_a_broken_chunk_mid_upload_is_json_and_leaves_no_file(served, clips):
    clip = clips.av.read_bytes()
    head = request("POST", "/classify", "Content-Type: video/mp4", "Transfer-Encoding: chunked")
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head + b"%x\r\n" % len(clip) + clip + b"\r\n")
        time.sleep(0.3)  # the application is reading the body by now
        sock.sendall(b"zz\r\n")
        response = read_response(sock)
    assert_json_error(response, 400, "invalid_http_request")
    assert "chunk" in response.json()["error"]["message"]
    assert wait_until_no_uploads(served) == []


def test_a_websocket_upgrade_is_answered_as_plain_http_and_ends_the_connection(served):
    """The parser cannot go on after an Upgrade head, so the connection closes after the answer
    (a request sent behind it is not left hanging)."""
    upgrade = ("Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    answer = exchange(served, request("GET", "/healthz", *upgrade) + request("GET", "/healthz"))
    assert answer.json() == {"status": "ok"} and answer.closed
    assert_json_error(exchange(served, request("GET", "/nope", *upgrade)), 404, "not_found")


# ---- multipart part headers ---------------------------------------------------------------------


def multipart(clip: bytes, filename: str, extra_headers: int = 0) -> tuple[bytes, str]:
    boundary = "avserve-test-boundary"
    lines = [f"--{boundary}", f'Content-Disposition: form-data; name="file"; filename="{filename}"', "Content-Type: video/mp4"]
    lines += [f"X-Extra-{i}: {i}" for i in range(extra_headers)]
    body = ("\r\n".join(lines) + "\r\n\r\n").encode() + clip + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_long_filename_is_fine_and_an_over_long_part_header_has_its_own_code(served, clips):
    clip = clips.av.read_bytes()
    with served.client() as client:
        for name in ("a" * 5000 + ".mp4", "é" * 2500 + ".mp4"):  # ~5 KB, in ASCII and in UTF-8
            body, content_type = multipart(clip, name)
            answer = client.post("/classify", content=body, headers={"Content-Type": content_type})
            assert answer.status_code == 200, answer.text
        body, content_type = multipart(clip, "a" * 20_000 + ".mp4")
        refused = assert_error(client.post("/classify", content=body, headers={"Content-Type": content_type}), 431, "part_header_too_large")
        assert "16384" in refused["error"]["message"]
        body, content_type = multipart(clip, "clip.mp4", extra_headers=7)  # 9 lines in the part
        assert_error(client.post("/classify", content=body, headers={"Content-Type": content_type}), 431, "part_header_too_large")
        body, content_type = multipart(clip, "clip.mp4", extra_headers=6)  # 8: the bound itself
        assert client.post("/classify", content=body, headers={"Content-Type": content_type}).status_code == 200
    assert wait_until_no_uploads(served) == []


# ---- the header timeout -------------------------------------------------------------------------


def close_seconds(sock: socket.socket, began: float, trickle: bytes = b"", limit: float = 30.0) -> tuple[float, bytes]:
    """Trickle `trickle` (10 B per 0.1 s) until the server closes; seconds from `began` and what it answered."""
    answer, sent = b"", 0
    sock.settimeout(0.1)
    while time.monotonic() - began < limit:
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 10])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - began, answer
            sent += 10
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - began, answer
        if not chunk:
            return time.monotonic() - began, answer
        answer += chunk
    raise AssertionError(f"still open after {limit} s")


def test_slow_headers_get_408_at_the_timeout_and_idle_connections_are_closed(served):
    slow = request("GET", "/healthz", "X-Slow: " + "s" * 2000)  # 100 B/s: 20 s to send
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        seconds, answer = close_seconds(sock, time.monotonic(), slow)
    assert HEADER_TIMEOUT - 0.05 <= seconds <= HEADER_TIMEOUT + 1.0, seconds
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"request_header_timeout"' in answer
    with socket.create_connection(("127.0.0.1", served.port)) as sock:  # sends nothing at all
        seconds, answer = close_seconds(sock, time.monotonic())
    assert HEADER_TIMEOUT - 0.05 <= seconds <= HEADER_TIMEOUT + 1.0, seconds
    assert answer == b""  # no request: nothing to answer


def test_the_header_timeout_applies_to_every_keep_alive_request(served):
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        for _ in range(3):  # prompt requests on one connection, spread over more than the timeout
            sock.sendall(request("GET", "/healthz"))
            assert read_response(sock).status == 200
            time.sleep(HEADER_TIMEOUT / 2)
        began = time.monotonic()
        seconds, answer = close_seconds(sock, began, request("GET", "/healthz", "X-Slow: " + "s" * 2000))
    assert HEADER_TIMEOUT - 0.05 <= seconds <= HEADER_TIMEOUT + 1.0, seconds
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_the_unread_body_of_an_answered_request_is_discarded_for_the_header_timeout_at_most(served):
    """uvicorn reads and drops the body of a request answered early (here a 413 before any byte):
    trickled, that body would hold the connection for ever; the header timeout bounds it."""
    head = request("POST", "/classify", "Content-Type: video/mp4", "Content-Length: 10000000000")
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head)
        assert_json_error(read_response(sock), 413, "file_too_large")
        seconds, rest = close_seconds(sock, time.monotonic(), b"\0" * 10_000)
    assert HEADER_TIMEOUT - 0.05 <= seconds <= HEADER_TIMEOUT + 1.0, seconds
    assert rest == b""


def test_pipelined_requests_are_all_answered(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(request("GET", "/healthz") + request("GET", "/v1/models") + request("GET", "/healthz"))
        statuses = [read_response(sock).status for _ in range(3)]
    assert statuses == [200, 200, 200]


def test_headers_in_time_and_a_body_slower_than_the_header_timeout_are_served(served, clips):
    """The timeout bounds the head only: a slow upload is bounded by the request deadline."""
    clip = clips.av.read_bytes()
    head = request("POST", "/classify", "Content-Type: video/mp4", f"Content-Length: {len(clip)}")
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        for index in range(0, len(head), 40):  # the head itself over ~0.5 s
            sock.sendall(head[index : index + 40])
            time.sleep(0.5 * 40 / len(head))
        steps = 20
        for index in range(steps):  # the body over 2 x the header timeout
            sock.sendall(clip[index * len(clip) // steps : (index + 1) * len(clip) // steps])
            time.sleep(2 * HEADER_TIMEOUT / steps)
        response = read_response(sock)
    assert response.status == 200, response.body
    assert response.json()["model"]["family"] == FAMILY


# ---- the metrics port ---------------------------------------------------------------------------


def test_metrics_are_served_on_the_metrics_port_only(served):
    metrics = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10)  # no credentials
    assert metrics.status_code == 200 and "avserve_requests_total" in metrics.text
    for path in ("/classify", "/docs", "/v1/models", "/healthz"):
        assert_error(httpx.get(f"http://127.0.0.1:{served.metrics_port}{path}", timeout=10), 404, "not_found")
    with served.client() as client:  # the main port: not there, even with a key
        assert_error(client.get("/metrics"), 404, "not_found")
        assert client.get("/docs").status_code == 200
    assert_error(httpx.get(f"{served.url}/docs", timeout=10), 401, "missing_api_key")


def http_rejections(served: ServedGateway) -> dict[tuple[str, str], float]:
    """avserve_http_rejections_total by (status, code), as the metrics port serves it."""
    text = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10).text
    return {
        (sample.labels["status"], sample.labels["code"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "avserve_http_rejections_total"
    }


def test_http_layer_rejections_are_counted_in_the_apps_metrics(served):
    """The protocol answers these before the application sees them; the app's /metrics counts them
    (the protocol reaches the app's GatewayMetrics through the ASGI lifespan state)."""
    before = http_rejections(served)
    assert set(before) == {
        ("400", "invalid_content_length"), ("400", "invalid_http_request"),
        ("408", "request_header_timeout"), ("431", "request_headers_too_large"),
    }  # fmt: skip
    assert_json_error(exchange(served, request("POST", "/classify", "Content-Length: abc")), 400, "invalid_content_length")
    assert_json_error(exchange(served, b"GARBAGE\r\n\r\n"), 400, "invalid_http_request")
    assert_json_error(exchange(served, b"GARBAGE\r\n\r\n", port=served.metrics_port), 400, "invalid_http_request")
    assert_json_error(exchange(served, request("GET", "/healthz", "X-Big: " + "a" * MAX_HEADER_BYTES)), 431, "request_headers_too_large")
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        seconds, answer = close_seconds(sock, time.monotonic(), request("GET", "/healthz", "X-Slow: " + "s" * 2000))
    assert answer.startswith(b"HTTP/1.1 408 ")
    with socket.create_connection(("127.0.0.1", served.port)) as sock:  # nothing sent: closed, not counted
        close_seconds(sock, time.monotonic())
    with served.client() as client:  # answered by the application: avserve_requests_total's business
        assert client.get("/nope").status_code == 404
    after = http_rejections(served)
    assert {key: after[key] - before[key] for key in before} == {
        ("400", "invalid_content_length"): 1, ("400", "invalid_http_request"): 2,
        ("408", "request_header_timeout"): 1, ("431", "request_headers_too_large"): 1,
    }  # fmt: skip


# ---- acceptance: many slow-header connections under normal traffic ------------------------------

SLOWLORIS = textwrap.dedent(
    """
    import asyncio, json, sys, time
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    HEAD = b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: " + b"s" * 100_000

    async def one(stop):
        began = time.monotonic()
        reader, writer = await asyncio.open_connection(host, port)
        answer = b""

        async def sender():  # 10 bytes every 0.1 s: 100 B/s
            sent = 0
            while True:
                writer.write(HEAD[sent:sent + 10]); sent += 10
                await asyncio.sleep(0.1)

        sending = asyncio.create_task(sender())
        stopping = asyncio.create_task(stop.wait())
        try:
            while True:
                reading = asyncio.create_task(reader.read(65536))
                done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if reading not in done:
                    reading.cancel(); return None  # stopped by us: not counted
                data = reading.result()
                if not data:
                    break
                answer += data
        except (ConnectionError, OSError):
            pass
        finally:
            sending.cancel(); stopping.cancel(); writer.close()
        return {"seconds": time.monotonic() - began, "answer": answer[:120].decode("latin-1")}

    async def attacker(stop):
        while not stop.is_set():
            result = await one(stop)
            if result is not None:
                print(json.dumps(result), flush=True)

    async def main():
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        tasks, stop = [], asyncio.Event()
        while line := (await reader.readline()).strip():
            if line == b"on" and (stop.is_set() or not tasks):  # "on" twice: still `count` connections
                stop = asyncio.Event()
                tasks = [asyncio.create_task(attacker(stop)) for _ in range(count)]
            elif line == b"off":
                stop.set(); await asyncio.gather(*tasks); tasks = []
            print(json.dumps({"ack": line.decode()}), flush=True)

    asyncio.run(main())
    """
)


class Slowloris:
    """`count` slow-header connections in their own process, each reopened when the server closes it."""

    def __init__(self, port: int, count: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SLOWLORIS, "127.0.0.1", str(port), str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self.closed: list[dict] = []

    def command(self, word: str) -> None:
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()
        while True:
            line = self.process.stdout.readline()
            assert line, "the slow-header process died"
            record = json.loads(line)
            if record.get("ack") == word:
                return
            self.closed.append(record)

    def stop(self) -> None:
        self.process.stdin.close()
        for line in self.process.stdout:
            record = json.loads(line)
            if "seconds" in record:
                self.closed.append(record)
        self.process.wait(30)


def test_fifty_slow_header_connections_are_closed_in_time_and_normal_traffic_keeps_its_p99(served, clips):
    """Issue 13 item 2's acceptance: 50 connections sending headers at 100 B/s are each closed
    at the header timeout (with a 408), again and again, while sequential /classify requests run;
    their p99 with the slow connections stays within 1.2x of without. Blocks with and without
    alternate (ABBA) so the machine's own noise falls on both; a noisy attempt is measured again."""
    clip = clips.av.read_bytes()
    attackers = Slowloris(served.port, 50)
    attempts = []
    try:
        with served.client() as client:

            def classify() -> float:
                began = time.perf_counter()
                response = client.post("/classify", files={"file": ("av.mp4", clip)})
                assert response.status_code == 200, response.text
                return time.perf_counter() - began

            for _ in range(5):  # warm-up: sessions, connection, page cache
                classify()
            for attempt in range(3):
                latencies: dict[bool, list[float]] = {False: [], True: []}
                slow = False
                for block in [False, True, True, False] * 2:
                    if block != slow:
                        attackers.command("on" if block else "off")
                        slow = block
                    block_end = time.monotonic() + 2 * HEADER_TIMEOUT  # each block sees closes and reconnects
                    while time.monotonic() < block_end:
                        latencies[slow].append(classify())
                if slow:
                    attackers.command("off")
                base, loaded = (float(np.percentile(latencies[s], 99)) for s in (False, True))
                attempts.append({"p99_without": base, "p99_with": loaded, "ratio": loaded / base,
                                 "median_ratio": float(np.median(latencies[True]) / np.median(latencies[False])),
                                 "requests": (len(latencies[False]), len(latencies[True]))})  # fmt: skip
                if loaded / base <= 1.2:
                    break
    finally:
        attackers.stop()
    closed = attackers.closed
    seconds = np.array([record["seconds"] for record in closed])
    print(f"\nslow-header connections closed by the server: {len(closed)}; seconds open: min {seconds.min():.3f} "
          f"median {np.median(seconds):.3f} max {seconds.max():.3f} (timeout {HEADER_TIMEOUT} s)")  # fmt: skip
    for record in attempts:
        print(f"p99 without {record['p99_without'] * 1000:.1f} ms, with {record['p99_with'] * 1000:.1f} ms: "
              f"ratio {record['ratio']:.3f} (median ratio {record['median_ratio']:.3f}, requests {record['requests']})")  # fmt: skip
    assert len(closed) >= 4 * 50, len(closed)  # every block of 50 was closed by the server at least twice
    assert all(record["answer"].startswith("HTTP/1.1 408 ") for record in closed)
    assert seconds.min() >= HEADER_TIMEOUT - 0.05 and seconds.max() <= HEADER_TIMEOUT + 1.0, (seconds.min(), seconds.max())
    assert attempts[-1]["ratio"] <= 1.2, attempts
