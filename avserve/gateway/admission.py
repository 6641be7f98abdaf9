"""Admission control at the gateway's real bottleneck: the media workers.

Probing and decoding cost tens to hundreds of milliseconds of CPU per request; inference of a
small model, a few. Under overload the queue in front of the decoders is where latency piles up
(before this, at 4x the sustainable rate accepted requests waited 8 s while only the in-flight
cap, 256, ever shed). So a request is admitted only if its media work can start soon enough:

    predicted wait = (admitted requests whose media work is not done) x service / workers

where `service` is a moving average of the worker time one request's probe and decodes took
(measured in the workers, so queueing is not in it). A request is refused at once, before its
upload is read, with 429 and a Retry-After of the predicted excess wait, when

  * the wait exceeds `queue_factor` service times (`media_queue_full`): the decode queue is
    bounded to about `queue_factor` requests per worker, in time rather than count, so the
    workers stay busy (goodput) while a queued request waits a couple of service times at most;
  * wait + service exceeds `latency_target` (`media_queue_full` too), when one is set;
  * wait + service exceeds the request's own deadline (`deadline_unreachable`); with nothing
    queued a request is always tried (a deadline shorter than one decode ends in 504).

The same idea as Triton's queue policy (a bounded queue, reject instead of time out) and the
adaptive concurrency limits of Envoy and Netflix (the limit follows measured latency), with the
bound expressed in the one unit an operator can reason about: seconds of waiting.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

# Until a request has been measured: a small clip's probe and decode on one core.
INITIAL_SERVICE_SECONDS = 0.05
# Weight of the newest measurement in the moving average (about the last 10 requests).
SMOOTHING = 0.1


@dataclass(frozen=True)
class Refusal:
    code: str  # "media_queue_full" | "deadline_unreachable"
    message: str
    retry_after: int  # whole seconds, >= 1


class Ticket:
    """One admitted request's place in the media queue; `media_done` (with the worker seconds it
    used) or `release` (it failed) takes it out, once."""

    def __init__(self, admission: MediaAdmission) -> None:
        self._admission = admission
        self._open = True

    def media_done(self, worker_seconds: float) -> None:
        if self._open:
            self._open = False
            self._admission._finish(worker_seconds)

    def release(self) -> None:
        if self._open:
            self._open = False
            self._admission._finish(None)


class MediaAdmission:
    def __init__(
        self,
        workers: int,
        *,
        queue_factor: float = 2.0,
        latency_target: float | None = None,
        initial_service: float = INITIAL_SERVICE_SECONDS,
    ) -> None:
        self.workers = workers
        self.queue_factor = queue_factor
        self.latency_target = latency_target
        self.service = initial_service
        self.pending = 0
        self._lock = threading.Lock()

    def predicted_wait(self) -> float:
        return self.pending * self.service / self.workers

    def admit(self, remaining: float) -> Ticket | Refusal:
        """A Ticket, or why not: `remaining` is the request's time to its deadline (seconds)."""
        with self._lock:
            wait, service = self.predicted_wait(), self.service
            queue_budget = self.queue_factor * service
            if self.latency_target is not None:
                queue_budget = min(queue_budget, self.latency_target - service)
            if wait > 0 and wait + service > remaining:  # an idle pool tries any deadline
                return self._refusal("deadline_unreachable", wait, remaining - service,
                                     f"the clips ahead need about {wait:.2f} s of decoding, more than this request's "
                                     f"deadline leaves ({remaining:.2f} s)")  # fmt: skip
            if wait > queue_budget:
                return self._refusal("media_queue_full", wait, queue_budget,
                                     f"the decoders are {wait:.2f} s behind (limit {max(queue_budget, 0):.2f} s); retry later")  # fmt: skip
            self.pending += 1
            return Ticket(self)

    def _refusal(self, code: str, wait: float, allowed: float, message: str) -> Refusal:
        return Refusal(code, message, retry_after=max(1, math.ceil(wait - max(allowed, 0.0))))

    def _finish(self, worker_seconds: float | None) -> None:
        with self._lock:
            self.pending -= 1
            if worker_seconds is not None and worker_seconds > 0:
                self.service += SMOOTHING * (worker_seconds - self.service)
