"""Child server processes (tritonserver, prometheus): tie them to us, pick ports, stop them for good."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """`preexec_fn` for a child server: if our process dies without stopping it, it gets SIGTERM."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: stop_process_group() still cleans up normally
        pass


def stop_process_group(process: subprocess.Popen, *, graceful: int, timeout: float) -> None:
    """Send `graceful` to a server started with `start_new_session=True`, wait up to `timeout`,
    then SIGKILL its whole process group: helpers it forked (Triton's Python stubs) share the
    group, and none may outlive the server."""
    if process.poll() is None:
        process.send_signal(graceful)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait()
    _kill_group(process.pid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(returncode: int) -> str:
    """`Popen.returncode` in words: "exited with code 1", "killed by SIGKILL"."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def free_ports(count: int, address: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free right now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((address if address not in ("0.0.0.0", "") else "127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
