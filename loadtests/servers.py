"""The bench's HTTP servers (the gateway, the eager baseline) as child processes.

Started, tied to us and stopped with avserve.processes, the lifecycle LocalTriton and
LocalPrometheus use: own session, SIGTERM if we die, SIGINT then SIGKILL of the whole group.

    server = Server.start_module("gateway-embedded", "loadtests.serve_gateway", log, "--repository", repo)
    server.url                                   # http://127.0.0.1:<free port>, answering /readyz
    server.stop()
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from avserve.processes import die_with_parent, free_ports, stop_process_group

ROOT = Path(__file__).resolve().parents[1]


class Server:
    """A server subprocess in its own session, ready once GET /readyz answers 200."""

    def __init__(self, name: str, command: list[str], log: Path, ready_timeout: float = 120.0):
        self.name = name
        self.port = int(command[command.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=die_with_parent)
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    @classmethod
    def start_module(cls, name: str, module: str, log: Path, *extra: str) -> Server:
        """`python -m module --port <free port> *extra`, this interpreter, from the repo root."""
        return cls(name, [sys.executable, "-m", module, "--port", str(free_ports(1)[0]), *extra], log)

    def _wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process_group(self.process, graceful=signal.SIGINT, timeout=15)
