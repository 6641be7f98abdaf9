"""Counters a backend keeps per model, for the gateway's metrics.

Both backends answer `stats()` with `{model_name: ModelStats}`: a consistent snapshot the
gateway can poll from a Prometheus collector (cumulative counts map onto counters, the
depths onto gauges). The embedded backend also calls an optional `on_batch` listener once
per executed batch, for a histogram of batch sizes and run times.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .base import BackendError, BackendOverloaded, BackendTimeout, BackendUnavailable, InferenceFailed


@dataclass(frozen=True)
class BatchEvent:
    """One session run of the embedded backend (a micro-batch, or a per-request retry)."""

    model: str
    requests: int  # requests answered by this run
    rows: int  # batch rows fed to the session (== requests when each request is one clip)
    seconds: float  # wall time of the session run in the worker thread
    ok: bool
    # How long the batcher held the batch back waiting for partners (0: it ran as soon as the
    # model was free), and how long its oldest request had been queued when it started.
    held_seconds: float = 0.0
    queued_seconds: float = 0.0


BatchListener = Callable[[BatchEvent], None]


@dataclass(frozen=True)
class ModelStats:
    """Snapshot of one model's counters; every count is cumulative since `start()`."""

    queue_depth: int = 0  # requests waiting for a batch (embedded) / awaiting Triton (triton)
    in_flight: int = 0  # requests in a batch that is running now
    requests: int = 0  # requests accepted (not shed)
    completed: int = 0  # requests answered successfully
    rejected: int = 0  # shed with BackendOverloaded
    expired: int = 0  # failed with BackendTimeout
    failed: int = 0  # failed with InferenceFailed
    unavailable: int = 0  # failed with BackendUnavailable
    batches: int = 0  # session runs (embedded only; Triton reports its own executions)
    held: int = 0  # batches held back waiting for a partner the arrival rate said was due (embedded)
    # rows per executed batch -> how many batches had that size (embedded only)
    batch_sizes: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class BatchPolicy:
    """How the embedded backend batches one model, chosen at start-up from its measured curve."""

    max_rows: int  # rows per session run (1: every request alone)
    reason: str  # why, in words (for logs and GET /v1/models)
    # batch rows -> ms per clip, measured at warm-up (empty: not measured)
    ms_per_clip: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))
    # Wait for a partner after a request reached an idle model only while the expected gap
    # between arrivals is below this (0: never wait); see avserve/backends/embedded.py.
    partner_wait_ms: float = 0.0


@dataclass
class _Counters:
    """The mutable side of `ModelStats`, touched only from the event loop (no locks)."""

    queue_depth: int = 0
    in_flight: int = 0
    requests: int = 0
    completed: int = 0
    rejected: int = 0
    expired: int = 0
    failed: int = 0
    unavailable: int = 0
    batches: int = 0
    held: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)

    def count(self, error: BackendError) -> None:
        """Count a request that failed with `error`."""
        if isinstance(error, BackendOverloaded):
            self.rejected += 1
        elif isinstance(error, BackendTimeout):
            self.expired += 1
        elif isinstance(error, InferenceFailed):
            self.failed += 1
        elif isinstance(error, BackendUnavailable):
            self.unavailable += 1

    def snapshot(self, queue_depth: int | None = None) -> ModelStats:
        return ModelStats(
            queue_depth=self.queue_depth if queue_depth is None else queue_depth,
            in_flight=self.in_flight,
            requests=self.requests,
            completed=self.completed,
            rejected=self.rejected,
            expired=self.expired,
            failed=self.failed,
            unavailable=self.unavailable,
            batches=self.batches,
            held=self.held,
            batch_sizes=MappingProxyType(dict(sorted(self.batch_sizes.items()))),
        )
