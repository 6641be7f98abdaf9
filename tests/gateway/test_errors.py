"""Every error path with a real request: status code, error code, and no temp file left."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from gateway_helpers import FAMILY, assert_error, post_clip, wait_until_no_uploads

UPLOAD_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def limited_gateway(gateway_factory, serving_repository):
    """Small limits, so each one can be hit with a small request."""
    return gateway_factory(
        repository=serving_repository, default_model=FAMILY, max_upload_bytes=UPLOAD_LIMIT, max_in_flight_requests=2,
        max_windows=2, max_frame_pixels=128 * 128, max_duration_seconds=10.0, backend_max_queue=1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def keyed_gateway(gateway_factory, serving_repository):
    return gateway_factory(repository=serving_repository, default_model=FAMILY, api_keys="key-one, key-two")


def raw_exchange(gateway, head: bytes, body_parts: list[bytes] = (), read_after_each: bool = False) -> bytes:
    """Send bytes over a plain socket and return whatever the server answers (up to 64 KiB)."""
    with socket.create_connection(gateway.host_port, timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        sock.shutdown(socket.SHUT_WR) if not read_after_each else None
        return sock.recv(65536)


# ---- uploads ---------------------------------------------------------------------------------


def test_upload_over_the_limit_is_413(limited_gateway, clips):
    big = clips.long_av.read_bytes() * (UPLOAD_LIMIT // clips.long_av.stat().st_size + 1)
    with limited_gateway.client() as client:
        assert_error(client.post("/classify", files={"file": ("big.mp4", big)}), 413, "file_too_large")
        assert_error(client.post("/classify", content=big, headers={"content-type": "video/mp4"}), 413, "file_too_large")
    assert wait_until_no_uploads(limited_gateway) == []


def test_declared_length_over_the_limit_is_refused_before_any_byte_is_read(limited_gateway):
    head = (
        b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
        b"Content-Length: 10000000000\r\n\r\n"
    )
    answer = raw_exchange(limited_gateway, head, read_after_each=True)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"file_too_large"' in answer


def test_streamed_upload_is_cut_off_as_soon_as_it_passes_the_limit(limited_gateway, clips):
    """Chunked upload without a length: the 413 arrives while the client is still sending."""
    first = clips.long_av.read_bytes()
    head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(limited_gateway.host_port, timeout=10) as sock:
        sock.sendall(head)
        sent = 0
        chunk = first + b"\0" * (64 * 1024 - len(first) % (64 * 1024))
        while sent <= UPLOAD_LIMIT + len(chunk):
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
        # The body is not finished (no terminating chunk), yet the answer is there.
        sock.settimeout(10)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert wait_until_no_uploads(limited_gateway) == []


def test_non_media_is_415_before_probing(embedded_gateway, tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 2000
    with embedded_gateway.client() as client:
        assert_error(client.post("/classify", files={"file": ("x.png", png)}), 415, "unsupported_media_type")
        text = b"just some text, certainly not a video" * 100
        assert_error(client.post("/classify", content=text, headers={"content-type": "video/mp4"}), 415, "unsupported_media_type")
        pdf = b"%PDF-1.7\n" + b"x" * 600
        assert_error(client.post("/classify", files={"file": ("a.mp4", pdf, "video/mp4")}), 415, "unsupported_media_type")


def test_a_body_that_is_not_a_clip_upload_is_415(embedded_gateway):
    with embedded_gateway.client() as client:
        assert_error(client.post("/classify", json={"file": "clip.mp4"}), 415, "unsupported_content_type")
        assert_error(client.post("/classify", data={"file": "x"}), 415, "unsupported_content_type")


def test_multipart_without_the_file_field_or_empty_file(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        wrong_field = client.post("/classify", files={"clip": ("av.mp4", clips.av.read_bytes())})
        assert_error(wrong_field, 422, "missing_file")
        assert_error(client.post("/classify", files={"file": ("empty.mp4", b"")}), 422, "empty_file")
        assert_error(client.post("/classify", content=b"", headers={"content-type": "video/mp4"}), 422, "empty_file")
        broken = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc"  # never closed
        response = client.post("/classify", content=broken, headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert_error(response, 422, "invalid_multipart")


def test_undecodable_media_is_422_with_the_media_error_code(embedded_gateway, clips):
    data = clips.av.read_bytes()
    with embedded_gateway.client() as client:
        # The mp4 index (moov) is at the end: cut it off.
        truncated = client.post("/classify", files={"file": ("cut.mp4", data[: len(data) // 2])})
        assert_error(truncated, 422, "corrupt_media")
        fake_mkv = b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8
        response = client.post("/classify", files={"file": ("x.mkv", fake_mkv)})
        assert response.status_code in (415, 422), response.text
        assert response.json()["error"]["code"] in ("corrupt_media", "unsupported_media", "no_decodable_stream")
    assert wait_until_no_uploads(embedded_gateway) == []


def test_decode_limits_from_media_limits(limited_gateway, clips):
    with limited_gateway.client() as client:
        assert_error(post_clip(client, clips.large_frames), 422, "frame_too_large")
        assert_error(post_clip(client, clips.long_audio), 422, "duration_too_long")
        assert_error(post_clip(client, clips.long_av, duration=6), 422, "invalid_window")  # 3 windows > 2


def test_invalid_query_parameters_are_422(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        for params in ({"top_k": 0}, {"start": -1}, {"duration": 0}, {"modality": "smell"}, {"timeout": "soon"}):
            assert_error(post_clip(client, clips.av, **params), 422, "invalid_request")


def test_unknown_paths_and_methods_use_the_error_shape(embedded_gateway):
    with embedded_gateway.client() as client:
        assert_error(client.get("/nope"), 404, "not_found")
        assert_error(client.get("/classify"), 405, "method_not_allowed")


# ---- access -------------------------------------------------------------------------------


def test_api_keys(keyed_gateway, clips):
    with keyed_gateway.client() as client:
        missing = assert_error(post_clip(client, clips.av), 401, "missing_api_key")
        assert missing and client.post("/classify").headers["www-authenticate"] == "Bearer"
        assert_error(client.post("/classify", headers={"X-API-Key": "key-three"}, files={"file": ("a", b"x")}), 403, "invalid_api_key")
        assert_error(client.get("/v1/models", headers={"Authorization": "Bearer key-on"}), 403, "invalid_api_key")
        assert_error(client.get("/v1/models"), 401, "missing_api_key")
        with clips.av.open("rb") as handle:
            ok = client.post("/classify", headers={"X-API-Key": "key-two"}, files={"file": ("av.mp4", handle)})
        assert ok.status_code == 200, ok.text
        assert client.get("/v1/models", headers={"Authorization": "Bearer key-one"}).status_code == 200
        # Probes need no key.
        for path in ("/healthz", "/readyz"):
            assert client.get(path).status_code == 200


def test_with_api_keys_metrics_and_docs_need_one_too(keyed_gateway):
    """Without a metrics port, /metrics and the OpenAPI docs take the same keys as the API; a
    browser gets a Basic challenge for the docs and sends the key as the password."""
    with keyed_gateway.client() as client:
        for path in ("/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            refused = assert_error(client.get(path), 401, "missing_api_key")
            assert refused["error"]["message"]
            assert_error(client.get(path, headers={"X-API-Key": "key-three"}), 403, "invalid_api_key")
            assert_error(client.get(path, auth=("anyone", "key-three")), 403, "invalid_api_key")
        assert client.get("/metrics").headers["www-authenticate"] == "Bearer"
        assert client.get("/docs").headers["www-authenticate"].startswith('Basic realm="avserve"')
        metrics = client.get("/metrics", headers={"Authorization": "Bearer key-two"})
        assert metrics.status_code == 200 and "avserve_requests_total" in metrics.text
        assert client.get("/metrics", headers={"X-API-Key": "key-one"}).status_code == 200
        assert client.get("/docs", auth=("", "key-one")).status_code == 200
        assert client.get("/openapi.json", auth=("me", "key-two")).json()["info"]["title"] == "avserve"
        assert_error(client.get("/docs", headers={"Authorization": "Basic !!!"}), 401, "missing_api_key")


# ---- time and load ------------------------------------------------------------------------


def test_deadline_is_504(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        assert_error(post_clip(client, clips.long_av, timeout=0.001), 504, "deadline_exceeded")
        assert post_clip(client, clips.av, timeout=30).status_code == 200
    assert wait_until_no_uploads(embedded_gateway) == []


def test_requests_beyond_the_in_flight_limit_are_shed_with_retry_after(limited_gateway, clips):
    """Two uploads held open fill the gateway (limit 2); the next request is shed at once."""
    head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nContent-Length: 100000\r\n\r\n"
    holders = [socket.create_connection(limited_gateway.host_port, timeout=10) for _ in range(2)]
    try:
        for sock in holders:
            sock.sendall(head + clips.av.read_bytes()[:1000])
        deadline = time.monotonic() + 5
        with limited_gateway.client() as client:
            while True:
                response = post_clip(client, clips.av)
                if response.status_code == 429 or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        body = assert_error(response, 429, "overloaded")
        assert int(response.headers["retry-after"]) >= 1 and body
    finally:
        for sock in holders:
            sock.close()
    # The held uploads ended with a disconnect: their temp files are gone too.
    assert wait_until_no_uploads(limited_gateway) == []
    with limited_gateway.client() as client:
        assert post_clip(client, clips.av).status_code == 200


def test_backend_queue_overflow_is_429(limited_gateway, clips):
    """Two windows infer at once; the backend's queue holds one request: the second is shed."""
    with limited_gateway.client() as client:
        response = post_clip(client, clips.long_av, duration=4)
    body = assert_error(response, 429, "overloaded")
    assert "max_queue" in body["error"]["message"] and int(response.headers["retry-after"]) >= 1


def test_client_disconnect_mid_upload_leaves_no_temp_file(embedded_gateway, clips):
    data = clips.av.read_bytes()
    head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nContent-Length: %d\r\n\r\n" % len(data)
    assert wait_until_no_uploads(embedded_gateway) == []
    with socket.create_connection(embedded_gateway.host_port, timeout=10) as sock:
        sock.sendall(head + data[: len(data) // 2])
        # Mid-upload the first half is on disk, in the gateway's upload directory: "nothing
        # left" below then means cleaned up, not never written.
        deadline = time.monotonic() + 10
        while not [p for p in embedded_gateway.leftover_uploads() if p.stat().st_size > 0]:
            assert time.monotonic() < deadline, "no spooled upload appeared in the upload directory"
            time.sleep(0.02)
        spooled = embedded_gateway.leftover_uploads()
        assert len(spooled) == 1 and spooled[0].name.startswith("avserve-upload-"), spooled
    assert wait_until_no_uploads(embedded_gateway) == []
    assert not spooled[0].exists()
    with embedded_gateway.client() as client:
        assert client.get("/healthz").status_code == 200


def test_no_input_causes_a_500(embedded_gateway, clips, synthetic_uploads):
    """Truncations and corruptions of real files of every format: always a documented 4xx."""
    originals = [clips.av, clips.audio, clips.video] + [path for path, _ in synthetic_uploads[::2]]
    bodies = []
    for path in originals:
        data = path.read_bytes()
        bodies += [data[:64], data[: len(data) // 3], data[: len(data) * 9 // 10]]
        flipped = bytearray(data)
        for i in range(200, len(flipped), 97):
            flipped[i] ^= 0x5A
        bodies.append(bytes(flipped))

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=embedded_gateway.url, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/classify", files={"file": ("clip", body)}) for body in bodies)
            )

    statuses = {}
    for response in asyncio.run(run()):
        assert response.status_code in (200, 413, 415, 422), response.text
        assert "error" in response.json() or "predictions" in response.json()
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert statuses.get(422, 0) > 0
    assert wait_until_no_uploads(embedded_gateway) == []
