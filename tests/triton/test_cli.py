"""`avserve triton` as a user runs it: a foreground process that prints URLs and stops on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _cli_env(tmp_path: Path) -> dict[str, str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    # TMPDIR: the server's temp dir lands where the test can check it is removed.
    return {**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}


def _run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avserve.cli", *args],
        capture_output=True, text=True, cwd=REPO, env=_cli_env(tmp_path), timeout=60,
    )  # fmt: skip


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_repository_exits_2(tmp_path: Path) -> None:
    result = _run_cli(["triton", "--repository", str(tmp_path / "nowhere")], tmp_path)
    _assert_one_line_error(result, "nowhere", "not a directory")


def test_invalid_repository_exits_2(tiny_repository: Path, tmp_path: Path) -> None:
    (tiny_repository / "tiny_audio" / "labels.txt").unlink()
    (tiny_repository / "tiny_av" / "labels.txt").write_text("one\n")
    result = _run_cli(["triton", "--repository", str(tiny_repository)], tmp_path)
    _assert_one_line_error(result, "tiny_audio: missing labels file", "1 labels but output 'logits' has 3")


def test_missing_triton_extra_exits_2(tiny_repository: Path, tmp_path: Path) -> None:
    # sys.modules[name] = None makes the package unfindable, as if the extra were not installed.
    code = (
        "import sys; sys.modules['pytriton'] = None\n"
        "from avserve.cli import app\n"
        f"app(['triton', '--repository', {str(tiny_repository)!r}], prog_name='avserve')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=_cli_env(tmp_path), timeout=60
    )
    _assert_one_line_error(result, "[triton] extra")


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_serves_until_signalled(tiny_repository: Path, tmp_path: Path, stop_signal: int, tiny) -> None:
    env = _cli_env(tmp_path)
    command = [sys.executable, "-m", "avserve.cli", "triton", "--repository", str(tiny_repository)]
    command += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    stdout = tiny.line_reader(process)
    try:
        lines = stdout.wait_for("Press Ctrl-C to stop.", timeout=60)
        urls = dict(line.split(None, 1) for line in lines if line.startswith("  "))
        assert set(urls) == {"HTTP", "gRPC", "metrics"}
        assert urls["metrics"].endswith("/metrics") and ":" in urls["gRPC"]
        with urllib.request.urlopen(urls["HTTP"] + "/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(urls["metrics"], timeout=5) as response:
            assert b"nv_inference_count" in response.read()

        process.send_signal(stop_signal)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    assert stdout.join(timeout=5)[-2:] == ["stopping Triton ...", "stopped"]
    assert tiny.processes_mentioning(env["TMPDIR"]) == []  # no tritonserver or stub left
    assert list(Path(env["TMPDIR"]).glob("avserve-triton-*")) == []  # shadow repository removed
