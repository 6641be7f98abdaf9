"""Helpers shared by the gateway tests."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

FAMILY = "zorro_tiny"
NUM_LABELS = 12


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post_clip(client: httpx.Client, path: Path, **params) -> httpx.Response:
    with path.open("rb") as handle:
        return client.post("/classify", params=params, files={"file": (path.name, handle)})


def scores(predictions: list[dict]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in predictions}


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def wait_until_no_uploads(gateway, timeout: float = 10.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while gateway.leftover_uploads() and time.monotonic() < deadline:
        time.sleep(0.05)
    return gateway.leftover_uploads()


def wait_until_ready(gateway, timeout: float = 60.0):
    """A gateway on the Triton backend connects in the background (and retries); tests that
    need answers wait for /readyz instead of racing the first connection on a loaded machine."""
    deadline = time.monotonic() + timeout
    with gateway.client() as client:
        while True:
            response = client.get("/readyz")
            if response.status_code == 200:
                return gateway
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not ready after {timeout:.0f} s: {response.text}")
            time.sleep(0.2)
