"""`avserve serve` and `avserve classify` as a user runs them: real processes over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gateway_helpers import FAMILY, free_port

AVSERVE = str(Path(sys.executable).parent / "avserve")


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([AVSERVE, *args], capture_output=True, text=True, timeout=timeout, env=env)


def start_serving(repository, env: dict[str, str], **popen) -> tuple[str, subprocess.Popen]:
    """`avserve serve` (embedded backend) in its own process on a free port, once /readyz answers."""
    port = free_port()
    process = subprocess.Popen(
        [AVSERVE, "serve", "--repository", str(repository), "--port", str(port), "--backend", "embedded"],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return url, process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"avserve serve did not become ready:\n{process.stdout.read()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(serving_repository, tmp_path_factory):
    """`avserve serve` in its own process, on a free port."""
    upload_dir = tmp_path_factory.mktemp("cli_uploads")
    url, process = start_serving(serving_repository, {"AVSERVE_UPLOAD_DIR": str(upload_dir), "AVSERVE_DEFAULT_MODEL": FAMILY})
    yield url, process
    process.send_signal(signal.SIGINT)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_classify_prints_a_table(served, clips):
    url, _ = served
    result = run_cli("classify", str(clips.av), "--url", url, "--top-k", "3")
    assert result.returncode == 0, result.stderr
    assert f"{FAMILY}_av" in result.stdout and "audio+video" in result.stdout
    assert "audio head" in result.stdout and "timings (ms)" in result.stdout
    ranks = [line for line in result.stdout.splitlines() if line.strip().startswith(("│ 1", "│ 2", "│ 3", "┃ 1"))]
    assert len(ranks) == 3, result.stdout


def test_classify_with_fast_sampling_says_how_the_frames_were_chosen(served, clips):
    url, _ = served
    result = run_cli("classify", str(clips.av), "--url", url, "--sampling", "fast")
    assert result.returncode == 0, result.stderr
    assert "frames: fast sampling" in result.stdout
    wrong = run_cli("classify", str(clips.av), "--url", url, "--sampling", "keyframes")
    assert wrong.returncode != 0 and "--sampling" in wrong.stderr


def test_classify_json_and_forced_modality(served, clips):
    url, _ = served
    result = run_cli("classify", str(clips.av), "--url", url, "--modality", "audio", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["model"]["name"] == f"{FAMILY}_audio" and body["modalities"]["used"] == ["audio"]


def test_classify_reports_gateway_errors(served, tmp_path):
    url, _ = served
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all " * 50)
    result = run_cli("classify", str(text), "--url", url)
    assert result.returncode == 1
    assert "415" in result.stderr and "unsupported_media_type" in result.stderr


def test_classify_without_a_gateway_fails_cleanly(clips):
    result = run_cli("classify", str(clips.av), "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "5")
    assert result.returncode == 2 and "cannot reach the gateway" in result.stderr


def test_serve_logs_json_lines_with_request_ids(served, clips):
    url, process = served
    response = httpx.post(f"{url}/classify", files={"file": clips.audio.read_bytes()}, headers={"X-Request-ID": "cli-log-1"})
    assert response.status_code == 200
    lines: list[str] = []
    deadline = time.monotonic() + 10
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline and not any("cli-log-1" in line for line in lines):
        chunk = process.stdout.readline()
        if chunk:
            lines.append(chunk)
        else:
            time.sleep(0.05)
    entry = json.loads(next(line for line in lines if "cli-log-1" in line))
    assert entry["request_id"] == "cli-log-1" and entry["status"] == 200 and entry["model"] == f"{FAMILY}_audio"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly(serving_repository, tmp_path, stop_signal):
    """Ctrl-C or SIGTERM: a graceful shutdown, exit 0, no traceback, and no process of the
    gateway's left (its media workers, their forkserver and resource tracker are reaped)."""
    _, process = start_serving(serving_repository, {"AVSERVE_UPLOAD_DIR": str(tmp_path)}, start_new_session=True)
    process.send_signal(stop_signal)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Traceback" not in output and "Application shutdown complete" in output
    group = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(process.pid)], capture_output=True, text=True).stdout
    assert group.strip() == "", group  # not even a zombie
