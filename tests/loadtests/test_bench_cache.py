"""loadtests/bench_cache.py's parts: the server CPU counter, and the main bench's guard against
a gateway whose response cache would count hits as throughput."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

BURN_SECONDS = 0.5
# A child that starts a grandchild burning BURN_SECONDS of CPU, then both wait.
TREE = f"""
import subprocess, sys
subprocess.run([sys.executable, "-c", '''
import time
began = time.process_time()
while time.process_time() - began < {BURN_SECONDS}:
    pass
print("burnt", flush=True)
time.sleep(60)
'''])
"""


def test_process_tree_cpu_counts_the_descendants():
    from loadtests.bench_cache import process_tree_cpu_seconds

    child = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout.readline().strip() == "burnt"
        # The burner is the child's child, still running: found by walking /proc, not via cutime.
        assert process_tree_cpu_seconds(child.pid) >= BURN_SECONDS * 0.9
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def test_the_bench_refuses_a_gateway_with_the_response_cache_on(zorro_repository, clip_dir, tmp_path, monkeypatch):
    import httpx

    from loadtests.bench_cache import refuse_cached_gateway
    from loadtests.clips import make_clips
    from loadtests.servers import Server

    repository, _ = zorro_repository
    clip = make_clips(clip_dir)[0]
    # serve_gateway (the bench's gateway) pins the cache off: the environment cannot turn it on.
    monkeypatch.setenv("AVSERVE_RESPONSE_CACHE_BYTES", str(1 << 20))
    servers = [
        Server.start_module("off", "loadtests.serve_gateway", tmp_path / "off.log", "--repository", str(repository)),
        Server.start_module("on", "loadtests.serve_gateway", tmp_path / "on.log", "--repository", str(repository),
                            "--response-cache-bytes", str(1 << 20)),
    ]

    async def guard(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            await refuse_cached_gateway(client, clip)

    try:
        began = time.monotonic()
        asyncio.run(guard(servers[0].url))  # returns: the cache is off
        with pytest.raises(SystemExit, match="response cache on"):
            asyncio.run(guard(servers[1].url))
        assert time.monotonic() - began < 60
    finally:
        for server in servers:
            server.stop()
