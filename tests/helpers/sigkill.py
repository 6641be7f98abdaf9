"""Killing a command with SIGKILL at a chosen moment: the SIGKILL tests of training and export.

    proc = launch([sys.executable, "-m", "avserve.cli", ...], log_path)
    if not kill_when(proc, condition):      # condition(): e.g. a checkpoint's NAME.tmp appeared
        ...                                 # it finished before the moment came
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def launch(command: list[str], log: Path) -> subprocess.Popen:
    """Start `command` with one BLAS/OpenMP thread (the kill moments are polled on the same
    cores) and its stderr in `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env)


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 120.0) -> bool:
    """SIGKILL proc as soon as condition() holds (polled every 0.2 ms); False if it exited first.
    Past `timeout` the process is killed anyway and the test fails."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if condition():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{proc.args[:4]} neither finished nor reached the kill moment in {timeout:g} s")
        time.sleep(0.0002)
    return False
