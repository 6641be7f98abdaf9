"""Probing and decoding in supervised worker processes.

FFmpeg parses hostile input in C, and a decoder crash (FFmpeg has a steady stream of such CVEs)
inside the gateway process would take every request in flight down with it. So the gateway
runs `probe`, `decode_audio` and `decode_video` in a pool of worker processes (pebble's
ProcessPool: a worker that dies fails only the call it was running, and is replaced):

    workers = MediaWorkers(processes=2, memory_bytes=1536 * 2**20, cpu_seconds=60)
    workers.start()
    result = await workers.run(probe, path, limits, timeout=remaining_seconds)
    result.value, result.seconds        # the function's return value, its time in the worker

Each call is bounded three ways, and the file is blamed (a MediaError, a 4xx) when it breaks one:
  * memory: every worker's address space is capped (RLIMIT_AS): an allocation past it fails
    (`decode_memory_limit`), or the worker dies (`decoder_crashed`);
  * CPU time: the worker's CPU clock is capped per call (RLIMIT_CPU; FFmpeg's threads count):
    past it the kernel kills the worker (`decode_cpu_limit`);
  * wall time: `timeout` (the request's remaining deadline) stops the worker and raises
    TimeoutError; so does cancelling the awaiting task (the client left): a decode never
    outlives its request.
Workers start from a forkserver that has already imported PyAV and numpy, so a replacement is
ready in milliseconds and never inherits the gateway's threads or event loop.

Test-only fault injection: with AVSERVE_TEST_CRASH_SUFFIX set in the gateway's environment, a
worker given a path ending with that suffix (as an argument, or in a list argument: a batch)
crashes itself (SIGSEGV), as a decoder bug would.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pebble

from .errors import ErrorCode, MediaError

T = TypeVar("T")

CRASH_SUFFIX_VARIABLE = "AVSERVE_TEST_CRASH_SUFFIX"
# What the forkserver imports once, so that every worker forked from it starts warm.
PRELOAD = ("av", "numpy", "avserve.media")
# Workers run below the gateway's own priority: when decoding saturates the cores, the event
# loop (accepting uploads, shedding with 429, health checks) must still get the CPU at once,
# and the decoders take what is left, which under overload is nearly all of it.
WORKER_NICENESS = 10


class MediaWorkersUnavailable(RuntimeError):
    """The pool is stopped or cannot start workers: a server fault, not the upload's."""


@dataclass(frozen=True)
class WorkerResult(Generic[T]):
    value: T
    seconds: float  # wall time of the call inside the worker (no queueing)


@dataclass
class WorkerStats:
    calls: int = 0
    # Calls that failed for a limit or lost their worker, by why: crashed, cpu_limit,
    # memory_limit, timeout, cancelled (all but memory_limit replace the worker).
    failures: dict[str, int] = field(default_factory=dict)


class MediaWorkers:
    def __init__(
        self,
        processes: int,
        *,
        memory_bytes: int | None = None,
        cpu_seconds: float | None = None,
        max_calls_per_worker: int = 0,
        niceness: int = WORKER_NICENESS,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.processes = processes
        self.memory_bytes = memory_bytes
        self.cpu_seconds = cpu_seconds
        self.max_calls_per_worker = max_calls_per_worker  # 0: never recycle a healthy worker
        self.niceness = niceness
        self.crash_suffix = os.environ.get(CRASH_SUFFIX_VARIABLE) or None
        self.stats = WorkerStats()
        self._lock = threading.Lock()
        self._pool: pebble.ProcessPool | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(PRELOAD))
        _short_multiprocessing_tempdir()
        _reap_helpers_at_exit()
        self._pool = pebble.ProcessPool(
            max_workers=self.processes,
            max_tasks=self.max_calls_per_worker,
            initializer=_start_worker,
            initargs=(self.memory_bytes, self.niceness),
            context=context,
        )

    async def warm_up(self) -> None:
        """Start the forkserver and the workers now (about half a second, once), not on the
        first request."""
        await asyncio.gather(*(self.run(os.getpid) for _ in range(self.processes)))

    def close(self) -> None:
        """Stop every worker now (running calls fail); the gateway calls it at shutdown."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
            pool.join(timeout=10)

    # ---- calls -----------------------------------------------------------------------------------

    async def run(self, function: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any) -> WorkerResult[T]:
        """`function(*args, **kwargs)` in a worker. Raises what it raises (MediaError), a MediaError
        for a worker lost to this call's input, TimeoutError past `timeout`."""
        pool = self._pool
        if pool is None:
            raise MediaWorkersUnavailable("the media workers are not running")
        if timeout is not None and timeout <= 0:
            raise TimeoutError("no time left for media work")
        try:
            future = pool.schedule(
                _call, args=(function, args, kwargs, self.cpu_seconds, self.crash_suffix), timeout=timeout
            )
        except RuntimeError as error:  # the pool is closed or broken
            raise MediaWorkersUnavailable(f"the media workers are not running: {error!r}") from None
        with self._lock:
            self.stats.calls += 1
        try:
            value, seconds = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self._failed("cancelled")  # pebble stops the worker running a cancelled call
            raise
        except FutureTimeout:
            self._failed("timeout")
            raise TimeoutError(f"media work took longer than {timeout:.3g} s") from None
        except pebble.ProcessExpired as expired:
            raise self._blame(expired) from None
        except MediaError as error:
            if error.code == ErrorCode.DECODE_MEMORY_LIMIT:
                self._failed("memory_limit")
            raise
        except (BrokenExecutor, OSError, EOFError) as error:  # workers that cannot even start
            raise MediaWorkersUnavailable(f"the media workers failed: {error!r}") from None
        return WorkerResult(value, seconds)

    def _blame(self, expired: pebble.ProcessExpired) -> MediaError:
        """The MediaError for a worker that died running a call."""
        if expired.exitcode == -signal.SIGXCPU:
            self._failed("cpu_limit")
            return MediaError(
                ErrorCode.DECODE_CPU_LIMIT, f"decoding this file took more than {self.cpu_seconds:g} s of CPU time"
            )
        self._failed("crashed")
        how = f"signal {signal.Signals(-expired.exitcode).name}" if expired.exitcode and expired.exitcode < 0 else f"exit code {expired.exitcode}"
        return MediaError(ErrorCode.DECODER_CRASHED, f"the decoder crashed on this file ({how}); the file is not usable")

    def _failed(self, reason: str) -> None:
        with self._lock:
            self.stats.failures[reason] = self.stats.failures.get(reason, 0) + 1


# A Unix socket's path is at most 107 bytes. The forkserver listens on one inside
# multiprocessing's temp dir (a pymp-* dir in TMPDIR), so a long TMPDIR (a CI's nested temp
# dirs) would keep the workers from ever starting.
_SOCKET_DIR_MAX = 64


def _short_multiprocessing_tempdir() -> None:
    """Give multiprocessing a temp dir short enough for the forkserver's socket path (only when
    TMPDIR is too long, and before anything has created one)."""
    config = multiprocessing.current_process()._config
    if config.get("tempdir") is not None or len(tempfile.gettempdir()) <= _SOCKET_DIR_MAX - 14:
        return
    for base in ("/tmp", "/dev/shm"):
        try:
            directory = tempfile.mkdtemp(prefix="pymp-", dir=base)
        except OSError:
            continue
        config["tempdir"] = directory
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        return


_helpers_reaped_at_exit = False


def _reap_helpers_at_exit() -> None:
    """Stop and reap multiprocessing's forkserver and resource tracker when this process exits.
    Left to themselves they exit after it, as orphans: under an init that does not reap (a bare
    container's PID 1) they would stay behind as zombies. (Once per process; the gateway has
    stopped its pool by then.)"""
    global _helpers_reaped_at_exit
    if _helpers_reaped_at_exit:
        return
    _helpers_reaped_at_exit = True

    def reap() -> None:
        from multiprocessing import forkserver, resource_tracker

        for helper in (forkserver._forkserver, resource_tracker._resource_tracker):
            try:
                helper._stop()  # closes its "alive" pipe, then waitpid()
            except (OSError, ChildProcessError):
                pass

    atexit.register(reap)


# ---- inside a worker ------------------------------------------------------------------------------


def _start_worker(memory_bytes: int | None, niceness: int) -> None:
    """Pool initializer: lower the worker's CPU priority and cap its address space (allocations
    past it fail)."""
    if niceness:
        os.nice(niceness)
    if memory_bytes:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


# A failed call whose peak address space came this close to the cap ran out of memory: FFmpeg
# reports a failed allocation (or a thread it could not start) as some other decoding error.
MEMORY_MARGIN_BYTES = 64 * 2**20


def _peak_address_space() -> int:
    """VmPeak of this process, in bytes (0 where /proc is not available)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmPeak:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _call(function: Callable[..., Any], args: tuple, kwargs: dict, cpu_seconds: float | None, crash_suffix: str | None):
    if cpu_seconds:
        # RLIMIT_CPU counts the whole process's CPU time since it started: allow this call
        # `cpu_seconds` more than what the worker has used so far.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + cpu_seconds)
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    paths = [item for arg in args for item in (arg if isinstance(arg, list) else [arg])]  # a batch call's list too
    if crash_suffix and any(str(path).endswith(crash_suffix) for path in paths):
        os.kill(os.getpid(), signal.SIGSEGV)
    peak_before = _peak_address_space()
    began = time.perf_counter()
    try:
        value = function(*args, **kwargs)
    except Exception as error:
        limit, _ = resource.getrlimit(resource.RLIMIT_AS)
        peak = _peak_address_space()
        near_cap = limit != resource.RLIM_INFINITY and peak > peak_before and peak >= limit - MEMORY_MARGIN_BYTES
        if isinstance(error, MemoryError) or near_cap:
            raise MediaError(
                ErrorCode.DECODE_MEMORY_LIMIT,
                f"decoding this file needs more memory than a worker may use ({limit // 2**20} MiB)",
            ) from None
        raise
    return value, time.perf_counter() - began
