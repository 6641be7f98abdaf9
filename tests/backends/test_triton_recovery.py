"""Triton hangs, dies mid-run and comes back: the same TritonBackend object never hangs,
fails fast while the server is away, and recovers by itself (its first request after the
restart succeeds, and a model configured during the outage is picked up)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from avserve.backends import BackendTimeout, BackendUnavailable, TritonSettings
from avserve.backends.triton import TritonBackend
from avserve.triton import LocalTriton

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _eventually(probe, timeout: float) -> float:
    """Seconds until `await probe()` is true; fails after `timeout`."""
    began = time.monotonic()
    while not await probe():
        assert time.monotonic() - began < timeout, f"not within {timeout} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - began


async def test_kill_and_restart(zorro_dir: Path, tmp_path: Path, onnx_reference, inputs_for, assert_same) -> None:
    repo = tmp_path / "model_repository"
    repo.mkdir()
    (repo / "zorro_tiny_audio").symlink_to(zorro_dir / "zorro_tiny_audio", target_is_directory=True)
    server = LocalTriton(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=90)
    server.start()
    backend = TritonBackend(server.grpc_url, TritonSettings(control_timeout=1.0))
    try:
        await backend.start()
        audio = inputs_for("zorro_tiny_audio", 1, 3)
        assert_same(await backend.infer("zorro_tiny_audio", audio), onnx_reference("zorro_tiny_audio", audio))

        # A hung server (stopped, connection still open): bounded by deadlines, no hang.
        assert server.pid is not None
        os.killpg(server.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(BackendTimeout):
                await backend.infer("zorro_tiny_audio", audio, deadline=began + 0.5)
            assert time.monotonic() - began < 1.5
            began = time.monotonic()
            assert not await backend.ready()
            assert time.monotonic() - began < 3.5  # 3 x control_timeout at most
        finally:
            os.killpg(server.pid, signal.SIGCONT)
        await _eventually(backend.ready, timeout=10)

        # Kill it (no graceful shutdown) with requests in flight. The server is stopped first, so
        # none of the 16 can have been answered when it dies: every one is still in flight.
        ports = (server.http_port, server.grpc_port, server.metrics_port)
        assert server.pid is not None
        os.killpg(server.pid, signal.SIGSTOP)
        in_flight = [
            asyncio.create_task(backend.infer("zorro_tiny_audio", inputs_for("zorro_tiny_audio", 1, seed)))
            for seed in range(16)
        ]
        await asyncio.sleep(0.3)  # sent, and waiting for the stopped server
        assert not [task for task in in_flight if task.done()], "a request finished before the kill"
        os.killpg(server.pid, signal.SIGKILL)
        server.stop()  # reaps the process and removes its temp dir
        killed = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), timeout=5)
        assert time.monotonic() - killed < 5
        # Each in-flight request fails fast with BackendUnavailable: no hang, no other error,
        # and no answer made up for a request the server never ran.
        assert all(isinstance(r, BackendUnavailable) for r in results), results

        # While it is away: every call fails fast, nothing hangs.
        for _ in range(3):
            began = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await backend.infer("zorro_tiny_audio", audio, deadline=time.monotonic() + 30)
            assert time.monotonic() - began < 1.0
            began = time.monotonic()
            assert not await backend.ready()
            assert time.monotonic() - began < 1.5

        # Configure a second model during the outage, restart on the same ports.
        (repo / "zorro_tiny_video").symlink_to(zorro_dir / "zorro_tiny_video", target_is_directory=True)
        server = LocalTriton(
            repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2], startup_timeout=90
        )
        await asyncio.sleep(1.5)  # the old channel's reconnect backoff has grown meanwhile
        server.start()

        # The same object recovers by itself: no start(), no new backend. A gateway that only
        # sends requests (no readiness polling) gets an answer to its very first one...
        began = time.monotonic()
        assert_same(await backend.infer("zorro_tiny_audio", audio), onnx_reference("zorro_tiny_audio", audio))
        assert time.monotonic() - began < 2
        # ... and ready() re-reads Triton's models, so the one added during the outage is served.
        await _eventually(backend.ready, timeout=10)
        assert sorted(backend.repository.models) == ["zorro_tiny_audio", "zorro_tiny_video"]
        assert backend.repository.model("zorro_tiny_video").labels == backend.repository.model("zorro_tiny_audio").labels
        assert_same(await backend.infer("zorro_tiny_audio", audio), onnx_reference("zorro_tiny_audio", audio))
        video = inputs_for("zorro_tiny_video", 1, 4)
        assert_same(await backend.infer("zorro_tiny_video", video), onnx_reference("zorro_tiny_video", video))
    finally:
        await backend.close()
        server.stop()

