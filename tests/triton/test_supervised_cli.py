"""Issue 13 item 5, as a user runs it: `avserve triton` and a gateway (`avserve serve --backend
triton`) as real processes under steady load; the tritonserver (not the supervisor) is SIGKILLed
twice. The supervisor restarts it each time on the same ports (log and metrics say so), the
gateway answers 503 backend_unavailable while it is away and 200 again after each restart without
being restarted itself, and no temp dir, python_env_* dir or process of the servers is left."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from avserve.processes import free_ports

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RESTART_DELAY = 0.5  # the first backoff; the second kill in a row waits twice that
KILLS = 2


def _wav_clip() -> bytes:
    """0.5 s of a 440 Hz tone, 16 kHz mono WAV: routed to tiny_audio."""
    t = np.arange(8000) / 16000
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(16000)
        clip.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes())
    return buffer.getvalue()


def _supervisor_metrics(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _child_dirs(scratch: Path) -> list[Path]:
    return sorted(p for p in scratch.iterdir() if not p.name.startswith("avserve-triton-supervisor-"))


def test_triton_killed_twice_under_load(tiny_repository: Path, tmp_path: Path, tiny) -> None:
    scratch = tmp_path / "triton-tmp"  # the supervisor's TMPDIR: everything its servers leave would be here
    gateway_tmp = tmp_path / "gateway-tmp"
    for directory in (scratch, gateway_tmp, gateway_tmp / "uploads"):
        directory.mkdir()
    supervisor = subprocess.Popen(
        [
            sys.executable, "-m", "avserve.cli", "triton", "--repository", str(tiny_repository),
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--supervisor-metrics-port", "0",
            "--restart-delay", str(RESTART_DELAY),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    output = tiny.line_reader(supervisor)
    gateway = None
    try:
        lines = output.wait_for("Press Ctrl-C to stop.", timeout=90)
        urls = dict(line.split(None, 1) for line in lines if line.startswith("  "))
        first_pid = int(re.search(r"\(pid (\d+),", next(line for line in lines if "Restarts it" in line)).group(1))
        assert tiny.tritonserver_pids(str(scratch)) == [first_pid]

        (gateway_port,) = free_ports(1)
        with (tmp_path / "gateway.log").open("wb") as gateway_log:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "avserve.cli", "serve", "--backend", "triton", "--triton-url", urls["gRPC"],
                 "--port", str(gateway_port)],
                stdout=gateway_log, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "TMPDIR": str(gateway_tmp), "AVSERVE_UPLOAD_DIR": str(gateway_tmp / "uploads"),
                     "AVSERVE_LOG_FORMAT": "text", "AVSERVE_LOG_LEVEL": "WARNING"},
            )  # fmt: skip
        gateway_pid = gateway.pid
        results, marks = asyncio.run(_scenario(f"http://127.0.0.1:{gateway_port}", scratch, output, tiny))
        assert gateway.poll() is None and gateway.pid == gateway_pid  # never restarted

        # Every answer is a 200 or a 503 backend_unavailable, and none hung.
        assert [r for r in results if r["status"] not in (200, 503)] == []
        assert {r["code"] for r in results if r["status"] == 503} <= {"backend_unavailable"}
        assert max(r["took"] for r in results) < 5.0, "a request hung while Triton was away"
        for kill in range(KILLS):
            killed, restarted, recovered = marks[f"killed{kill}"], marks[f"restarted{kill}"], marks[f"recovered{kill}"]
            steady_since = marks.get(f"recovered{kill - 1}", 0.0)
            before = [r["status"] for r in results if steady_since <= r["sent"] and r["sent"] + r["took"] < killed]
            down = [r["status"] for r in results if killed + 0.3 < r["sent"] and r["sent"] + r["took"] < restarted]
            after = [r["status"] for r in results if recovered <= r["sent"] < marks.get(f"killed{kill + 1}", 1e9)]
            assert before and set(before) == {200}
            assert 503 in down, f"no 503 while Triton was away after kill {kill + 1}"
            assert after and set(after) == {200}, f"not steadily 200 after restart {kill + 1}: {after}"
            print(
                f"kill {kill + 1}: restart logged {restarted - killed:.2f} s after the kill, "
                f"first 200 {recovered - killed:.2f} s after it ({down.count(503)} x 503 meanwhile)"
            )

        # The supervisor said so, in its log and its metrics.
        lines = output.lines
        died = [line for line in lines if "killed by SIGKILL" in line]
        assert len(died) == KILLS and output.count("tritonserver restarted") == KILLS
        delays = [float(re.search(r"in a row in ([\d.]+) s", line).group(1)) for line in died]
        assert 0.8 * RESTART_DELAY <= delays[0] <= RESTART_DELAY  # 20% jitter at most
        assert 1.6 * RESTART_DELAY <= delays[1] <= 2 * RESTART_DELAY  # doubled: a second failure in a row
        print(f"backoff delays: {delays}")
        metrics = _supervisor_metrics(urls["supervisor"])
        assert metrics[("avserve_triton_restarts_total", (("outcome", "ready"),))] == KILLS
        assert metrics[("avserve_triton_restarts_total", (("outcome", "failed"),))] == 0
        assert metrics[("avserve_triton_unexpected_exits_total", ())] == KILLS
        assert metrics[("avserve_triton_last_exit_code", ())] == -signal.SIGKILL
        assert metrics[("avserve_triton_up", ())] == 1
        assert metrics[("avserve_triton_consecutive_failures", ())] == KILLS

        supervisor.send_signal(signal.SIGINT)
        assert supervisor.wait(timeout=60) == 0, output.lines
        assert output.join(timeout=5)[-2:] == ["stopping Triton ...", "stopped"]
    finally:
        for process in (supervisor, gateway):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    assert tiny.processes_mentioning(str(scratch)) == []  # no tritonserver or stub of any incarnation
    assert list(scratch.iterdir()) == []  # no temp dir, no python_env_*


async def _scenario(url: str, scratch: Path, output, tiny) -> tuple[list[dict], dict[str, float]]:
    clip = _wav_clip()
    results: list[dict] = []
    marks: dict[str, float] = {}
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = await client.post("/classify", files={"file": ("clip.wav", clip)})
            except httpx.TimeoutException:
                results.append({"sent": sent, "took": time.monotonic() - sent, "status": "timeout", "code": None})
                continue
            code = response.json().get("error", {}).get("code") if response.status_code != 200 else None
            results.append({"sent": sent, "took": time.monotonic() - sent, "status": response.status_code, "code": code})
            await asyncio.sleep(0.05)

    async def eventually(condition, timeout: float, what: str) -> float:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
            await asyncio.sleep(0.05)
        return time.monotonic()

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        deadline = time.monotonic() + 60
        while True:  # the gateway connects to Triton in the background
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway never became ready"
            await asyncio.sleep(0.2)
        loops = [asyncio.create_task(client_loop(client)) for _ in range(2)]
        try:
            await eventually(lambda: sum(r["status"] == 200 for r in results) >= 5, 30, "steady 200s")
            for kill in range(KILLS):
                (pid,) = tiny.tritonserver_pids(str(scratch))
                marks[f"killed{kill}"] = time.monotonic()
                os.kill(pid, signal.SIGKILL)  # the server only: its stubs and the supervisor live on
                marks[f"restarted{kill}"] = await eventually(
                    lambda: output.count("tritonserver restarted") > kill, 60, f"restart {kill + 1}"
                )
                (restarted_line,) = [line for line in output.lines if "tritonserver restarted" in line][kill:]
                assert f"restarted (pid {tiny.tritonserver_pids(str(scratch))[0]})" in restarted_line
                # Exactly one server's temp dir, holding its python_env_* dir: the killed one's is gone.
                (child,) = _child_dirs(scratch)
                assert [p.parent for p in scratch.rglob("python_env_*")] == [child / "tmp"]
                await eventually(
                    lambda: any(r["status"] == 200 and r["sent"] > marks[f"killed{kill}"] for r in results),
                    30, f"a 200 after restart {kill + 1}",
                )  # fmt: skip
                recovered = min(r["sent"] for r in results if r["status"] == 200 and r["sent"] > marks[f"killed{kill}"])
                marks[f"recovered{kill}"] = recovered
                await eventually(lambda: sum(r["sent"] > recovered for r in results) >= 10, 30, "load after recovery")
        finally:
            stop.set()
            await asyncio.gather(*loops)
    return results, marks


def test_giving_up_exits_1_with_the_reason(tiny_repository: Path, tmp_path: Path, tiny) -> None:
    """--max-restarts 0: the first death ends `avserve triton` with code 1, a clear error, nothing left."""
    scratch = tmp_path / "triton-tmp"
    scratch.mkdir()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "avserve.cli", "triton", "--repository", str(tiny_repository),
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--max-restarts", "0",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    output = tiny.line_reader(process)
    try:
        output.wait_for("Press Ctrl-C to stop.", timeout=90)
        (pid,) = tiny.tritonserver_pids(str(scratch))
        os.kill(pid, signal.SIGKILL)
        assert process.wait(timeout=60) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = output.join(timeout=5)
    (error,) = [line for line in lines if line.startswith("error: ")]
    assert f"tritonserver (pid {pid}) killed by SIGKILL" in error and "gave up after 1 failure in a row" in error
    assert "--- last lines of" in "\n".join(lines)  # the server log's tail follows
    assert tiny.processes_mentioning(str(scratch)) == []
    assert list(scratch.iterdir()) == []
