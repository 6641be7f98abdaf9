"""`SupervisedTriton`: keep a local tritonserver up, restarting it with backoff when it dies.

    with SupervisedTriton("model_repository", http_port=0, grpc_port=0, metrics_port=0,
                          supervisor_port=0) as triton:
        ...  # triton.grpc_url stays the same across restarts; triton.wait() blocks

What `avserve triton` runs. One monitor thread owns every server: it starts the first one
(`start()` waits until it is ready, or raises its error: a bad repository is not retried), polls
it, and when it exits without being asked to (a crash, a kill) it stops what is left of it (its
Python-backend stubs, shared memory and temp dir), waits a backoff delay (`Backoff`) and starts a
new one on the same ports. Each server is a fresh `LocalTriton` with its own temp dir, removed
when that server goes. After `RestartPolicy.max_restarts` failures in a row without a healthy
period, the supervisor gives up: `wait()` raises `TritonGaveUp`. `stop()` never restarts.

The log (logger `avserve.triton.supervisor`) says why each server went and when the next one
starts; with `supervisor_port`, Prometheus metrics `avserve_triton_*` are served on
http://ADDRESS:PORT/metrics (Triton's own metrics stay on its metrics port).
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, start_wsgi_server

from avserve.processes import describe_exit

from .install import LocalTritonError, TritonInstall, find_triton
from .server import LocalTriton, TritonEndpoints, _resolve_ports
from .shadow import ShadowRepository

logger = logging.getLogger(__name__)


class TritonGaveUp(LocalTritonError):
    """The server kept dying: more than `max_restarts` failures in a row."""


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a server that died.

    The n-th failure in a row waits `initial_delay * multiplier**(n-1)` seconds, at most
    `max_delay`, minus up to `jitter` of that at random (servers that died together do not come
    back in lockstep). A server that stayed up `reset_after` seconds starts a new series. A
    failed restart attempt counts as a failure; failure number `max_restarts + 1` gives up
    (`max_restarts=0`: never restart).
    """

    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.2
    reset_after: float = 60.0
    max_restarts: int = 5

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ValueError("restart delays must satisfy 0 <= initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError("the backoff multiplier must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction of the delay in [0, 1)")
        if self.reset_after < 0 or self.max_restarts < 0:
            raise ValueError("reset_after and max_restarts must not be negative")


class Backoff:
    """The delays of a `RestartPolicy`: `after_failure()` per failure, None once it gives up."""

    def __init__(self, policy: RestartPolicy, random: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self.failures = 0  # in a row, without a healthy period
        self._random = random

    def after_failure(self, up_for: float) -> float | None:
        """Seconds to wait before the next start, or None to give up. `up_for`: how long the
        server that failed had been ready (0 for a start that never got ready)."""
        policy = self.policy
        if up_for >= policy.reset_after:
            self.failures = 0
        self.failures += 1
        if self.failures > policy.max_restarts:
            return None
        # The exponent is capped so a long series cannot overflow a float.
        delay = min(policy.max_delay, policy.initial_delay * policy.multiplier ** min(self.failures - 1, 64))
        return delay * (1 - policy.jitter * self._random())


class SupervisorMetrics:
    """The supervisor's own Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.up = Gauge("avserve_triton_up", "1 while the supervised tritonserver is ready, else 0.", registry=r)
        self.unexpected_exits = Counter(
            "avserve_triton_unexpected_exits", "tritonserver exits the supervisor did not ask for.", registry=r
        )
        self.last_exit_code = Gauge(
            "avserve_triton_last_exit_code",
            "Exit status of the last unexpected exit: its code, or minus the signal that killed it.", registry=r,
        )  # fmt: skip
        self.restarts = Counter(
            "avserve_triton_restarts", "Restart attempts, by outcome (ready or failed).", ["outcome"], registry=r
        )
        for outcome in ("ready", "failed"):
            self.restarts.labels(outcome)
        self.consecutive_failures = Gauge(
            "avserve_triton_consecutive_failures",
            "Failures in a row without a healthy period (the supervisor gives up past max_restarts).", registry=r,
        )  # fmt: skip
        self.backoff = Gauge(
            "avserve_triton_restart_backoff_seconds", "Delay before the latest restart attempt.", registry=r
        )
        self.start_time = Gauge(
            "avserve_triton_server_start_time_seconds", "Unix time the current tritonserver became ready.", registry=r
        )
        self.startup = Gauge(
            "avserve_triton_startup_seconds", "Seconds the latest (re)start took to become ready.", registry=r
        )


class SupervisedTriton(TritonEndpoints):
    """A `LocalTriton` that is restarted when it dies; same URLs, `start()`, `wait()`, `stop()`."""

    def __init__(
        self,
        repository: Path | str,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        address: str = "127.0.0.1",
        policy: RestartPolicy | None = None,
        supervisor_port: int | None = None,
        log_file: Path | str | None = None,
        poll_interval: float = 0.1,
        random: Callable[[], float] = random.random,
        install: TritonInstall | None = None,
        **triton_options,
    ) -> None:
        """`supervisor_port`: serve the supervisor's metrics there (0: any free port; None: not
        at all). `triton_options`: the other `LocalTriton` arguments, for every server."""
        self.source = Path(repository)
        self.address = address
        self.policy = policy or RestartPolicy()
        self.metrics = SupervisorMetrics()
        self.poll_interval = poll_interval
        self._requested_ports = (http_port, grpc_port, metrics_port)
        self._requested_supervisor_port = supervisor_port
        self._requested_log_file = Path(log_file) if log_file is not None else None
        self._random = random
        self._install = install
        self._options = triton_options
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.supervisor_port: int | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None  # of the first server
        self.restarts = 0  # servers started after the first
        self._workdir: Path | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._first_done = threading.Event()
        # Set when the monitor thread has stopped its last server. Waited on instead of
        # Thread.join(): in Python 3.11 a KeyboardInterrupt inside join() can mark a thread that
        # is still running as stopped (bpo-45274), and we would exit with the server still up.
        self._done = threading.Event()
        self._first_error: BaseException | None = None
        self._gave_up: str | None = None
        self._child: LocalTriton | None = None
        self._ready_at = 0.0  # monotonic time the current server became ready
        self._last_child: LocalTriton | None = None
        self._metrics_server = None

    # ---- where it listens ------------------------------------------------------------------

    @property
    def supervisor_url(self) -> str | None:
        """The supervisor's own metrics, when served."""
        return None if self.supervisor_port is None else f"http://{self._host()}:{self.supervisor_port}/metrics"

    @property
    def server(self) -> LocalTriton | None:
        """The current server (None while it is down or restarting)."""
        return self._child

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None else None

    @property
    def shadow(self) -> ShadowRepository | None:
        child = self._child or self._last_child
        return child.shadow if child is not None else None

    def is_running(self) -> bool:
        """True while the supervisor runs (its server may be restarting)."""
        return self._thread is not None and not self._done.is_set()

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SupervisedTriton:
        """Start the first server and return once it is ready; its start-up error otherwise."""
        if self._thread is not None:
            raise LocalTritonError("this SupervisedTriton is already started")
        try:
            self._install = self._install or find_triton()
            if self._requested_log_file is None:
                # One log for every server this supervisor starts (each appends to it).
                self._workdir = Path(tempfile.mkdtemp(prefix="avserve-triton-supervisor-"))
            self.log_path = self._requested_log_file or self._workdir / "server.log"
            self.http_port, self.grpc_port, self.metrics_port = _resolve_ports(self._requested_ports, self.address)
            if self._requested_supervisor_port is not None:
                self._metrics_server, _ = start_wsgi_server(
                    self._requested_supervisor_port, addr=self.address, registry=self.metrics.registry
                )
                self.supervisor_port = self._metrics_server.server_port
            self._thread = threading.Thread(target=self._supervise, name="triton-supervisor", daemon=True)
            self._thread.start()
            while not self._first_done.wait(0.2):  # short waits: Ctrl-C gets through
                pass
            if self._first_error is not None:
                raise self._first_error
        except BaseException:
            self.stop()
            raise
        return self

    def wait(self) -> int:
        """Block while the supervisor keeps a server up. Raises `TritonGaveUp` when it stops
        restarting; returns 0 when `stop()` ended it."""
        if self._thread is None and not self._done.is_set():
            raise LocalTritonError("the supervisor is not started")
        while not self._done.wait(0.5):  # short waits: Ctrl-C gets through
            pass
        if self._gave_up is not None:
            raise TritonGaveUp(f"{self._gave_up}\n--- last lines of {self.log_path} ---\n{self.log_tail()}")
        return 0

    def stop(self) -> None:
        """Stop the current server (no restart), the metrics endpoint, and remove the temp dirs."""
        self._stopping.set()  # also cancels a start-up in progress
        thread, self._thread = self._thread, None
        if thread is not None:
            while not self._done.wait(0.5):
                pass
            thread.join()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # ---- the monitor thread ------------------------------------------------------------------

    def _supervise(self) -> None:
        # Every server is started and stopped on this thread: a server's parent-death signal
        # (processes.die_with_parent) follows the thread that forked it, and this one outlives them.
        try:
            try:
                self._start_server()
            except BaseException as error:
                self._first_error = error
                return
            finally:
                self._first_done.set()
            backoff = Backoff(self.policy, self._random)
            while True:
                child = self._child
                assert child is not None
                code = self._watch(child)
                if code is None:
                    return  # stop() asked
                up_for = time.monotonic() - self._ready_at
                reason = f"tritonserver (pid {child.pid}) {describe_exit(code)} after {up_for:.1f} s up"
                self.metrics.up.set(0)
                self.metrics.start_time.set(0)
                self.metrics.unexpected_exits.inc()
                self.metrics.last_exit_code.set(code)
                self._child = None
                child.stop()  # its stubs, shared memory and temp dir go with it
                if not self._restart(backoff, reason, up_for):
                    return
        finally:
            child, self._child = self._child, None
            if child is not None:
                child.stop()
            self.metrics.up.set(0)
            self._done.set()

    def _restart(self, backoff: Backoff, reason: str, up_for: float) -> bool:
        """Start a new server after the last one failed; False when stopped or giving up."""
        while True:
            delay = backoff.after_failure(up_for)
            self.metrics.consecutive_failures.set(backoff.failures)
            if delay is None:
                failures = f"{backoff.failures} failure{'s' if backoff.failures != 1 else ''}"
                self._gave_up = (
                    f"{reason}; gave up after {failures} in a row "
                    f"(max {self.policy.max_restarts} restarts without {self.policy.reset_after:g} s up)"
                )
                logger.error("%s", self._gave_up)
                return False
            self.metrics.backoff.set(delay)
            logger.warning(
                "%s; restart %d of at most %d in a row in %.2f s",
                reason, backoff.failures, self.policy.max_restarts, delay,
            )  # fmt: skip
            if self._stopping.wait(delay):
                return False
            try:
                self._start_server()
            except Exception as error:
                if self._stopping.is_set():
                    return False
                self.metrics.restarts.labels("failed").inc()
                first_line = (str(error).splitlines() or [type(error).__name__])[0]
                reason = f"restart {backoff.failures} failed: {first_line}"
                up_for = 0.0
                continue
            self.restarts += 1
            self.metrics.restarts.labels("ready").inc()
            assert self._child is not None
            logger.info(
                "tritonserver restarted (pid %s), ready in %.1f s on the same ports (%d restarts so far)",
                self._child.pid, self._child.startup_seconds or 0.0, self.restarts,
            )  # fmt: skip
            return True

    def _start_server(self) -> None:
        assert self.log_path is not None
        child = LocalTriton(
            self.source, http_port=self.http_port, grpc_port=self.grpc_port, metrics_port=self.metrics_port,
            address=self.address, log_file=self.log_path, install=self._install, cancel=self._stopping,
            **self._options,
        )  # fmt: skip
        child.start()  # on failure it has already stopped itself and removed its temp dir
        self._ready_at = time.monotonic()
        if self.startup_seconds is None:
            self.startup_seconds = child.startup_seconds
        self._child = self._last_child = child
        self.metrics.up.set(1)
        self.metrics.start_time.set(time.time())
        self.metrics.startup.set(child.startup_seconds or 0.0)

    def _watch(self, child: LocalTriton) -> int | None:
        """Wait until the server exits (its status) or stop() is called (None)."""
        while not self._stopping.wait(self.poll_interval):
            code = child.poll()
            if code is not None:
                return code
        return None
