"""In-process onnxruntime backend with per-model micro-batching.

    backend = EmbeddedBackend("model_repository", EmbeddedSettings(max_batch_size=8, max_delay_ms=2))
    await backend.start()                    # sessions created and warmed up in a worker thread
    out = await backend.infer("zorro_tiny_av", {"audio": a[None], "video": v[None]}, deadline=t)

How a request travels (one `_ModelWorker` per model):

1. `infer` checks the request against the spec (names, dtypes, dims, batch size), then
   appends it to the model's bounded queue; a full queue sheds it at once with
   `BackendOverloaded` and a retry-after estimate (queued batches x recent batch time).
2. The model's batcher task (`batches_in_flight` of them, default one) takes what is queued,
   up to the model's `max_rows`, and runs it (the batching rule below).
3. Requests whose deadline passed (or whose caller gave up) are dropped before running.
   The rest are concatenated along axis 0 and run in one `session.run` in a worker thread,
   so the event loop never blocks; outputs are split back per request.
4. If the batch fails, each of its requests is rerun alone, so only the faulty request
   gets `InferenceFailed` and the others still get answers.

The batching rule: batch where it pays, never wait on an idle model for nothing.

* How many rows (per model, at start-up): warm-up measures the model's batch curve, the
  time per clip at batch 1, 2, 4, 8 (up to its largest batch; the best of up to five
  interleaved rounds within `batch_curve_seconds`; a model too slow for one round, such as
  a paper-size one, gets only batch 1 and its largest batch, once). `max_rows` is the
  largest measured batch whose time per clip is below `batch_pays_below` (0.9) x batch 1's;
  when none is, `max_rows` is 1 and the model never batches. On a CPU a large model's GEMMs
  are already big at batch 1 and batching gains nothing (zorro_vit_b16's audio graph: 251
  ms/clip at batch 1, 288 at batch 8), while a tiny graph gains 1.7x at batch 8.
  `follow_batch_curve=False` batches up to `max_batch_size` whatever the curve says.
* When to run: a request that reaches an idle model (nothing running, nothing queued) runs
  at once, alone. Requests that queued while a batch ran form the next batch, taken as soon
  as the model is free: they have waited already, and under load batches form by themselves.
* How many of the queued to take: a batch answers all its requests only when its last clip
  is done, so batching a short queue can cost its first requests more than it saves. With N
  rows queued, c(k) the curve's time per clip at batch k (interpolated between measured
  sizes), running k of them as one batch instead of one by one changes the queue's total
  latency by N k c(k) - c(1) k ((k + 1) / 2 + N - k) (the batch's k finish together instead
  of one after another; the N - k behind it start sooner or later). The batcher takes the k
  (up to `max_rows`) that lowers it most, or 1: batch k pays only when
  c(k) / c(1) < 1 - (k - 1) / 2N. A queue of 2 with batch 2 at 0.91x runs one by one; deep
  queues under overload take full batches.
* The curve as served: measured alone at start-up, batches may save less once the other
  models run alongside on the same cores (on a loaded 2-core host the tiny `_av` graph's
  batches of 4 cost more per clip as served than its single runs, though 0.7x alone). So
  the batcher tracks, per model, how much slower than the curve its served batches run
  relative to its served single runs (`_ServedCost`), and scales c(k) for k > 1 by that
  factor: batching stops where it stops paying as served. Single runs slowly age that
  evidence, so batching is tried again later.
* When to wait for a partner (the one exception): with t1 and t2 the model's times for a
  batch of one and of two (from its curve), a lone request run at once and a partner
  arriving g seconds later (g < t1) finish after t1 and 2 t1 - g (the partner waits for the
  first run, then runs alone); held for the partner, both finish after g + t2. Holding wins
  on total latency only when g < 1.5 t1 - t2, and never when g >= t1 (the model would have
  been free anyway). So a lone request is held only while the model's expected gap between
  arrivals (an exponentially weighted average of its inter-arrival gaps) is below
  W = min(1.5 t1 - t2, t1 / 2, max_delay_ms), and held at most W after it arrived (t1 / 2
  is the bound with perfect batching, t2 = t1: noise in the curve cannot stretch the wait).
  A model whose batch of two costs 1.5 t1 or more never waits; nor does a closed-loop
  client, whose next request comes only after its answer (gap > t1 > W). Holding needs
  a measured curve: without warm-up, requests batch only with what queued.

`micro_batching=False` runs every request alone (the benchmark's baseline); models without a
batch axis (max_batch_size 0) too. `batch_policies()` answers each model's curve, `max_rows`
and W (also logged at start-up, and shown by the gateway's GET /v1/models).

A caller whose deadline passes while its request is queued or running gets
`BackendTimeout` at the deadline, not when the batch finishes. `close()` fails queued and
running requests with `BackendUnavailable`.

Metrics: `stats()` returns a `ModelStats` snapshot per model (queue depth, in flight,
outcome counts, batch-size counts, batches held for a partner); `on_batch` (constructor
argument) is called on the event loop after every session run with a `BatchEvent` (size,
run time, success, time held for partners, time its oldest request was queued).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnxruntime as ort

from avserve.contract import CONFIG_FILE, ONNX_MODEL_FILE
from avserve.repository import ModelSpec, Repository, RepositoryError, load_repository, read_model_config

from ._inputs import check_request
from .base import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    InferenceBackend,
    InferenceFailed,
)
from .settings import EmbeddedSettings
from .stats import BatchEvent, BatchListener, BatchPolicy, ModelStats, _Counters

log = logging.getLogger(__name__)

ONNX_BACKENDS = frozenset({"onnxruntime", "onnxruntime_onnx"})
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# Floor of the retry-after hint: a client told "retry in 0 s" would hammer the gateway.
MIN_RETRY_AFTER_SECONDS = 0.05
# Batch sizes the batch curve measures (up to a model's largest batch, which is added).
CURVE_SIZES = (1, 2, 4, 8)
# Rounds of the curve's runs at most: the best of five is steady enough on a shared machine.
CURVE_MAX_ROUNDS = 5
# Weight of the newest gap in a model's average inter-arrival gap: a few arrivals move it.
ARRIVAL_GAP_WEIGHT = 0.2


class EmbeddedBackend(InferenceBackend):
    name = "embedded"

    def __init__(
        self,
        repository_dir: Path | str,
        settings: EmbeddedSettings | None = None,
        *,
        on_batch: BatchListener | None = None,
    ) -> None:
        self.settings = settings or EmbeddedSettings()
        self._on_batch = on_batch
        # Parsing configs is cheap and surfaces repository errors at construction; sessions
        # are created by start().
        full = load_repository(Path(repository_dir))
        served = [spec for spec in full.models.values() if _backend_of(spec) in ONNX_BACKENDS]
        # name -> backend of the models onnxruntime cannot run (python, tensorrt, ensembles)
        self.skipped = {
            name: _backend_of(spec) for name, spec in full.models.items() if _backend_of(spec) not in ONNX_BACKENDS
        }
        for name, backend in self.skipped.items():
            log.warning("embedded backend skips model %s: backend %r is not ONNX", name, backend)
        if not served:
            raise RepositoryError(f"{repository_dir}: no ONNX model for the embedded backend")
        self._repository = Repository.from_specs(served, root=full.root)
        self._workers: dict[str, _ModelWorker] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self.providers: list[str] = []  # the execution providers the sessions use, after start()

    # ---- InferenceBackend ------------------------------------------------------------------

    @property
    def repository(self) -> Repository:
        return self._repository

    async def start(self) -> None:
        async with self._start_lock:
            if self._closed:
                raise BackendUnavailable("the embedded backend is closed")
            if self._started:
                return
            self.providers = _providers(self.settings)
            specs = list(self._repository.models.values())
            self._executor = ThreadPoolExecutor(
                max_workers=len(specs) * self.settings.batches_in_flight, thread_name_prefix="avserve-ort"
            )
            loop = asyncio.get_running_loop()
            workers = []
            # Session creation and warm-up take seconds: keep them off the event loop.
            for spec in specs:
                session, warm_seconds, curve = await loop.run_in_executor(
                    self._executor, _create_session, spec, self.settings, self.providers
                )
                policy = choose_batch_policy(curve, _largest_batch(spec, self.settings), self.settings)
                if policy.max_rows in curve:  # the retry-after hint's seed: one run at max_rows
                    warm_seconds = curve[policy.max_rows] * policy.max_rows / 1000
                log.info(
                    "%s: batch curve %s ms/clip -> up to %d rows, waits for a partner up to %.2f ms (%s)",
                    spec.name, {rows: round(ms, 2) for rows, ms in curve.items()} or "not measured",
                    policy.max_rows, policy.partner_wait_ms, policy.reason,
                )  # fmt: skip
                workers.append(
                    _ModelWorker(spec, session, self.settings, policy, self._executor, warm_seconds, self._on_batch)
                )
            for worker in workers:
                worker.start()
                self._workers[worker.spec.name] = worker
            self._started = True
            log.info("embedded backend serving %s on %s", sorted(self._workers), self.providers)

    async def close(self) -> None:
        self._closed = True
        workers, self._workers = list(self._workers.values()), {}
        await asyncio.gather(*(worker.close() for worker in workers))
        if self._executor is not None:
            # A session run cannot be interrupted; its thread finishes and its result is dropped.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def ready(self) -> bool:
        return (
            self._started
            and not self._closed
            and set(self._workers) == set(self._repository.models)
            and all(worker.alive for worker in self._workers.values())
        )

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        worker = self._workers.get(model)
        if worker is None:
            if self._closed or not self._started:
                raise BackendUnavailable("the embedded backend is not started" if not self._closed else "closed")
            raise BackendUnavailable(f"model {model!r} is not served (have {sorted(self._workers)})")
        return await worker.infer(inputs, outputs, deadline)

    # ---- metrics ---------------------------------------------------------------------------

    def stats(self) -> dict[str, ModelStats]:
        """Per-model counters (see `avserve.backends.stats.ModelStats`)."""
        return {name: worker.stats() for name, worker in self._workers.items()}

    def batch_policies(self) -> dict[str, BatchPolicy]:
        """Per model: its measured batch curve, its `max_rows` and partner wait (after start())."""
        return {name: worker.policy for name, worker in self._workers.items()}


# ---- the batching policy -----------------------------------------------------------------------


def rows_worth_batching(per_clip_ms: Sequence[float], queued: int) -> int:
    """How many of `queued` rows to run as one batch now (module docstring).

    `per_clip_ms[k]`: ms per clip at batch k, for k = 1 .. the model's max_rows (index 0 unused).
    """
    single = per_clip_ms[1]
    best_rows, best_saving = 1, 0.0
    for rows in range(2, min(queued, len(per_clip_ms) - 1) + 1):
        one_by_one = single * rows * ((rows + 1) / 2 + queued - rows)
        saving = one_by_one - queued * rows * per_clip_ms[rows]
        if saving > best_saving:
            best_rows, best_saving = rows, saving
    return best_rows


def choose_batch_policy(ms_per_clip: Mapping[int, float], largest: int, settings: EmbeddedSettings) -> BatchPolicy:
    """A model's rows per run and partner wait, from its batch curve (see the module docstring).

    `ms_per_clip`: batch rows -> ms per clip as measured (empty: not measured); `largest`: the
    most rows the model and the settings allow (0 or 1: the model cannot batch).
    """
    curve = MappingProxyType(dict(sorted(ms_per_clip.items())))
    if not settings.micro_batching or largest <= 1:
        reason = "micro-batching off" if not settings.micro_batching else "the model has no batch axis to batch on"
        return BatchPolicy(max_rows=1, reason=reason, ms_per_clip=curve)
    if 1 not in curve or len(curve) < 2:
        return BatchPolicy(
            max_rows=largest, reason="no batch curve measured: batches only what queued", ms_per_clip=curve
        )
    single = curve[1]
    # Interpolated when batch 2 was not measured, as the batcher sizes batches (`per_clip_ms`).
    pair_seconds, single_seconds = 2 * float(np.interp(2, list(curve), list(curve.values()))) / 1000, single / 1000
    partner_wait = min(1.5 * single_seconds - pair_seconds, single_seconds / 2, settings.max_delay_ms / 1000)
    paying = [rows for rows, ms in curve.items() if rows > 1 and ms < settings.batch_pays_below * single]
    best_rows = min(curve, key=lambda rows: curve[rows] / single)
    if not settings.follow_batch_curve:
        max_rows, reason = largest, f"follow_batch_curve off: up to {largest} rows whatever the curve"
    elif paying:
        max_rows = max(paying)
        reason = (
            f"batch {max_rows} costs {curve[max_rows] / single:.2f}x batch 1 per clip "
            f"(pays below {settings.batch_pays_below:g}x)"
        )
    else:
        max_rows = 1
        reason = (
            f"batching does not pay: the cheapest batch per clip, {best_rows}, costs "
            f"{curve[best_rows] / single:.2f}x batch 1 (pays below {settings.batch_pays_below:g}x)"
        )
    return BatchPolicy(
        max_rows=max_rows,
        reason=reason,
        ms_per_clip=curve,
        partner_wait_ms=max(0.0, partner_wait) * 1000 if max_rows > 1 else 0.0,
    )


# ---- one model -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Request:
    inputs: Mapping[str, np.ndarray]
    outputs: tuple[str, ...]
    rows: int
    deadline: float | None
    enqueued: float
    future: asyncio.Future[dict[str, np.ndarray]]
    # Shapes past the batch axis: only requests that agree can be concatenated (differs
    # only for models with variable dims).
    signature: tuple[tuple[int, ...], ...]


class _ServedCost:
    """How much more batches cost as served than the start-up curve says, relative to single
    runs (module docstring): a factor for the curve's c(k), k > 1 (1: as measured)."""

    WEIGHT = 0.1  # of the newest run in each average
    AGING = 0.01  # per single run, the batches' average moves this much toward the singles'
    MIN_RUNS = 5  # of each kind before the factor departs from 1

    def __init__(self) -> None:
        self.single = 1.0  # served / curve time per clip, single runs (average)
        self.batched = 1.0  # the same, batches
        self.runs = {"single": 0, "batched": 0}

    def observe(self, rows: int, served_ms_per_clip: float, curve_ms_per_clip: float) -> None:
        drift = served_ms_per_clip / curve_ms_per_clip
        if rows == 1:
            self.single = self._average(self.single, drift, self.runs["single"])
            self.batched += self.AGING * (self.single - self.batched)
            self.runs["single"] += 1
        else:
            self.batched = self._average(self.batched, drift, self.runs["batched"])
            self.runs["batched"] += 1

    def _average(self, average: float, value: float, runs: int) -> float:
        return value if runs == 0 else average + self.WEIGHT * (value - average)

    @property
    def factor(self) -> float:
        if min(self.runs.values()) < self.MIN_RUNS:
            return 1.0
        return self.batched / self.single

    def corrected(self, per_clip_ms: list[float]) -> list[float]:
        factor = self.factor
        return per_clip_ms if factor == 1.0 else per_clip_ms[:2] + [ms * factor for ms in per_clip_ms[2:]]


@dataclass
class _Batch:
    requests: list[_Request]
    held: float  # seconds the batcher held it back waiting for partners


class _ModelWorker:
    """The queue, batcher tasks and session of one model. Event-loop side only."""

    def __init__(
        self,
        spec: ModelSpec,
        session: ort.InferenceSession,
        settings: EmbeddedSettings,
        policy: BatchPolicy,
        executor: ThreadPoolExecutor,
        batch_seconds: float,
        on_batch: BatchListener | None,
    ) -> None:
        self.spec = spec
        self.session = session
        self.settings = settings
        self.policy = policy
        self.executor = executor
        self.on_batch = on_batch
        self.input_names = tuple(tensor.name for tensor in spec.inputs)
        self.output_names = tuple(tensor.name for tensor in spec.outputs)
        self.max_rows = policy.max_rows
        self.batching = self.max_rows > 1
        self.partner_wait = policy.partner_wait_ms / 1000
        # ms per clip at every batch size up to max_rows, for sizing batches to the queue; None:
        # no curve to follow (not measured, or follow_batch_curve off): take up to max_rows.
        self.per_clip_ms: list[float] | None = None
        self.served_cost = _ServedCost()
        if self.batching and settings.follow_batch_curve and len(policy.ms_per_clip) > 1:
            measured = sorted(policy.ms_per_clip)
            self.per_clip_ms = [math.nan] + [
                float(np.interp(rows, measured, [policy.ms_per_clip[m] for m in measured]))
                for rows in range(1, self.max_rows + 1)
            ]
        # Average gap between arrivals (inf until two have come): says when a partner is due.
        self.arrival_gap = math.inf
        self.last_arrival: float | None = None
        self.counters = _Counters()
        self.pending: deque[_Request] = deque()
        self.pending_rows = 0
        self.running: set[_Request] = set()
        self.wakeup = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.batch_seconds = batch_seconds  # moving average, for the retry-after hint
        self.closed = False

    @property
    def alive(self) -> bool:
        return not self.closed and bool(self.tasks) and not any(task.done() for task in self.tasks)

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self._batcher(), name=f"avserve-batcher-{self.spec.name}-{i}")
            for i in range(self.settings.batches_in_flight)
        ]

    def stats(self) -> ModelStats:
        return self.counters.snapshot(queue_depth=len(self.pending))

    # ---- the caller's side -----------------------------------------------------------------

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None, deadline: float | None
    ) -> dict[str, np.ndarray]:
        try:
            return await self._infer(inputs, outputs, deadline)
        except BackendError as error:
            self.counters.count(error)
            raise

    async def _infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None, deadline: float | None
    ) -> dict[str, np.ndarray]:
        if self.closed:
            raise BackendUnavailable("the embedded backend is closed")
        rows, wanted = check_request(self.spec, inputs, outputs)
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise BackendTimeout(f"deadline passed before {self.spec.name!r} was queued")
        if len(self.pending) >= self.settings.max_queue:
            raise BackendOverloaded(
                f"{self.spec.name!r}: {len(self.pending)} requests queued (max_queue {self.settings.max_queue})",
                retry_after_seconds=self._retry_after(),
            )
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        signature = tuple(inputs[name].shape[1 if rows else 0 :] for name in self.input_names)
        self._note_arrival(now)
        self.pending.append(_Request(dict(inputs), wanted, max(rows, 1), deadline, now, future, signature))
        self.pending_rows += max(rows, 1)
        self.counters.requests += 1
        self.wakeup.set()
        if deadline is None:
            # A cancelled caller cancels `future` too; the batcher then skips the request.
            result = await future
        else:
            try:
                result = await asyncio.wait_for(future, deadline - now)
            except TimeoutError:
                raise BackendTimeout(f"{self.spec.name!r} did not answer before the deadline") from None
        self.counters.completed += 1
        return result

    def _note_arrival(self, now: float) -> None:
        if self.last_arrival is not None:
            gap = now - self.last_arrival
            first = math.isinf(self.arrival_gap)
            self.arrival_gap = gap if first else self.arrival_gap + ARRIVAL_GAP_WEIGHT * (gap - self.arrival_gap)
        self.last_arrival = now

    def _retry_after(self) -> float:
        """How long until the queue has drained: queued batches times a recent batch's time."""
        batches = self.pending_rows / self.max_rows + 1
        estimate = batches * self.batch_seconds / self.settings.batches_in_flight
        return round(max(MIN_RETRY_AFTER_SECONDS, estimate), 3)

    # ---- the batcher's side ------------------------------------------------------------------

    async def _batcher(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._run(batch)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a bug here must not hang the callers
                log.exception("batcher of %s failed", self.spec.name)
                self._fail(batch.requests, InferenceFailed(f"{self.spec.name}: internal error: {error}"))

    async def _next_batch(self) -> _Batch:
        while True:
            reached_idle = False
            while not self.pending:
                reached_idle = True
                self.wakeup.clear()
                await self.wakeup.wait()
            held = 0.0
            if reached_idle and not self.running and self._partner_due():
                # The one wait (module docstring): at most partner_wait after the request arrived.
                began = time.monotonic()
                self.counters.held += 1
                flush_at = self.pending[0].enqueued + self.partner_wait
                while self.pending_rows < self.max_rows and (remaining := flush_at - time.monotonic()) > 0:
                    self.wakeup.clear()
                    try:
                        await asyncio.wait_for(self.wakeup.wait(), remaining)
                    except TimeoutError:
                        break
                held = time.monotonic() - began
            requests = self._take()
            if requests:
                return _Batch(requests, held)

    def _partner_due(self) -> bool:
        """Whether the arrival rate says another request comes soon enough to be worth holding for."""
        return self.batching and self.pending_rows < self.max_rows and self.arrival_gap < self.partner_wait

    def _take(self) -> list[_Request]:
        batch: list[_Request] = []
        rows = 0
        limit = self.max_rows
        if self.per_clip_ms is not None:
            limit = rows_worth_batching(self.served_cost.corrected(self.per_clip_ms), self.pending_rows)
        now = time.monotonic()
        while self.pending:
            request = self.pending[0]
            live = not request.future.done()  # done: the caller gave up (deadline, cancel)
            if live and request.deadline is not None and request.deadline <= now:
                request.future.set_exception(BackendTimeout(f"deadline passed while {self.spec.name!r} was queued"))
                live = False
            if live and batch and (rows + request.rows > limit or request.signature != batch[0].signature):
                break
            self.pending.popleft()
            self.pending_rows -= request.rows
            if live:
                batch.append(request)
                rows += request.rows
                if not self.batching:
                    break
        return batch

    async def _run(self, held_batch: _Batch) -> None:
        batch = held_batch.requests
        self.running.update(batch)
        self.counters.in_flight += len(batch)
        loop = asyncio.get_running_loop()
        waits = {"held": held_batch.held, "queued": time.monotonic() - min(request.enqueued for request in batch)}
        try:
            try:
                results, seconds = await loop.run_in_executor(self.executor, self._execute, batch)
            except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types
                self._observe(batch, 0.0, ok=False, **waits)
                if len(batch) == 1:
                    self._fail(batch, _failed(self.spec.name, error))
                    return
                # Rerun one by one so the error lands only on the request that caused it.
                log.info("batch of %d failed on %s, retrying per request: %s", len(batch), self.spec.name, error)
                for request in batch:
                    if request.future.done():
                        continue
                    try:
                        (result,), seconds = await loop.run_in_executor(self.executor, self._execute, [request])
                    except Exception as single_error:  # noqa: BLE001
                        self._observe([request], 0.0, ok=False)
                        self._fail([request], _failed(self.spec.name, single_error))
                    else:
                        self._observe([request], seconds, ok=True)
                        _resolve(request, result)
                return
            self._observe(batch, seconds, ok=True, **waits)
            for request, result in zip(batch, results):
                _resolve(request, result)
        finally:
            self.running.difference_update(batch)
            self.counters.in_flight -= len(batch)

    def _execute(self, batch: list[_Request]) -> tuple[list[dict[str, np.ndarray]], float]:
        """Worker thread: concatenate, run once, split. Touches no event-loop state."""
        began = time.perf_counter()
        names = [name for name in self.output_names if any(name in request.outputs for request in batch)]
        if len(batch) == 1:
            feed = dict(batch[0].inputs)
        else:
            feed = {name: np.concatenate([request.inputs[name] for request in batch]) for name in self.input_names}
        arrays = self.session.run(names, feed)
        if len(batch) == 1:
            per_request = [dict(zip(names, arrays))]
        else:
            offsets = np.cumsum([request.rows for request in batch])[:-1]
            parts = [np.split(array, offsets) for array in arrays]
            per_request = [{name: parts[j][i] for j, name in enumerate(names)} for i in range(len(batch))]
        results = [
            {name: outputs[name] for name in request.outputs} for request, outputs in zip(batch, per_request)
        ]
        return results, time.perf_counter() - began

    def _observe(
        self, batch: list[_Request], seconds: float, *, ok: bool, held: float = 0.0, queued: float = 0.0
    ) -> None:
        rows = sum(request.rows for request in batch)
        self.counters.batches += 1
        self.counters.batch_sizes[rows] += 1
        if ok and self.per_clip_ms is not None and rows < len(self.per_clip_ms):
            self.served_cost.observe(rows, seconds * 1000 / rows, self.per_clip_ms[rows])
        if ok:
            # Per-row time scaled to a full batch: the hint must not shrink when batches are small.
            full = seconds * self.max_rows / max(rows, 1)
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * full
        if self.on_batch is not None:
            try:
                self.on_batch(BatchEvent(self.spec.name, len(batch), rows, seconds, ok, held, queued))
            except Exception:  # noqa: BLE001 - metrics must never break serving
                log.exception("on_batch listener failed")

    def _fail(self, batch: list[_Request], error: BackendError) -> None:
        for request in batch:
            if not request.future.done():
                request.future.set_exception(error)

    async def close(self) -> None:
        self.closed = True
        # Snapshot first: a cancelled batcher takes its batch out of `running` as it unwinds.
        stranded = list(self.pending) + list(self.running)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self._fail(stranded, BackendUnavailable(f"the embedded backend closed before {self.spec.name!r} answered"))
        self.pending.clear()
        self.pending_rows = 0
        self.running.clear()


# ---- sessions ----------------------------------------------------------------------------------


def _backend_of(spec: ModelSpec) -> str:
    return spec.backend or spec.platform


def _providers(settings: EmbeddedSettings) -> list[str]:
    available = ort.get_available_providers()
    if settings.device == "cuda" and CUDA_PROVIDER not in available:
        raise BackendUnavailable(
            f"device 'cuda' asked for, but this onnxruntime has only {available} (install onnxruntime-gpu)"
        )
    if settings.device in ("cuda", "auto") and CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def _create_session(
    spec: ModelSpec, settings: EmbeddedSettings, providers: list[str]
) -> tuple[ort.InferenceSession, float, dict[int, float]]:
    """Worker thread: open the latest version's ONNX file, check it, warm it up, measure its
    batch curve.

    Returns the session, the time of one full-batch run (the retry-after estimate's seed) and
    the curve (batch rows -> ms per clip; empty when not measured).
    """
    assert spec.path is not None and spec.versions, "embedded specs come from disk"
    config = read_model_config(spec.path / CONFIG_FILE)
    onnx_path = spec.path / str(max(spec.versions)) / (config.default_model_filename or ONNX_MODEL_FILE)

    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads(settings.intra_op_threads, spec, "intra_op_thread_count")
    options.inter_op_num_threads = _threads(settings.inter_op_threads, spec, "inter_op_thread_count")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if settings.allow_spinning else "0")
    provider_options = [{"device_id": str(settings.cuda_device_id)} if p == CUDA_PROVIDER else {} for p in providers]
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=providers, provider_options=provider_options)
    except Exception as error:  # noqa: BLE001 - onnxruntime's load errors have their own types
        raise RepositoryError(f"{onnx_path}: onnxruntime cannot load the model: {error}") from error

    graph_inputs = {node.name for node in session.get_inputs()}
    graph_outputs = {node.name for node in session.get_outputs()}
    config_inputs = {tensor.name for tensor in spec.inputs}
    if config_inputs != graph_inputs:
        raise RepositoryError(f"{onnx_path}: config inputs {sorted(config_inputs)} != graph inputs {sorted(graph_inputs)}")
    unknown = sorted({tensor.name for tensor in spec.outputs} - graph_outputs)
    if unknown:
        raise RepositoryError(f"{onnx_path}: config outputs {unknown} are not graph outputs")

    full_batch = _largest_batch(spec, settings)
    seconds = 0.01  # a guess until measured
    curve: dict[int, float] = {}
    if settings.warmup:
        # The first runs allocate memory arenas and pick kernels; do it before a client waits.
        for rows in sorted({1, max(full_batch, 1)}):
            began = time.perf_counter()
            session.run(None, spec.zero_inputs(rows))
            seconds = time.perf_counter() - began
        if full_batch > 1 and settings.batch_curve_seconds > 0:
            curve = _measure_batch_curve(session, spec, full_batch, settings.batch_curve_seconds)
    return session, seconds, curve


def _largest_batch(spec: ModelSpec, settings: EmbeddedSettings) -> int:
    """The most rows one run may take: 1 when batching is off (0 if the model has no batch axis)."""
    return min(settings.max_batch_size, spec.max_batch_size) if settings.micro_batching else min(1, spec.max_batch_size)


def _measure_batch_curve(
    session: ort.InferenceSession, spec: ModelSpec, largest: int, budget_seconds: float
) -> dict[int, float]:
    """Worker thread, after warm-up: ms per clip at each of CURVE_SIZES up to `largest`.

    Rounds of one run per size (interleaved, so a noisy neighbour hits every size alike), as
    many as fit in `budget_seconds` up to CURVE_MAX_ROUNDS; the best run of each size counts.
    A model too slow for one round gets only batch 1 and its largest batch, once.
    """
    feeds = {rows: spec.zero_inputs(rows) for rows in sorted({*CURVE_SIZES, largest}) if rows <= largest}

    def timed(rows: int) -> float:
        began = time.perf_counter()
        session.run(None, feeds[rows])
        return time.perf_counter() - began

    single = timed(1)
    sizes = sorted(feeds)
    round_seconds = single * sum(sizes)  # batching gains little at best: a round costs about this
    if round_seconds > budget_seconds:
        sizes, rounds = [1, largest], 1
    else:
        rounds = min(CURVE_MAX_ROUNDS, int(budget_seconds / round_seconds))
    best = dict.fromkeys(sizes, math.inf) | {1: single}
    for _ in range(rounds):
        for rows in sizes:
            best[rows] = min(best[rows], timed(rows))
    return {rows: seconds * 1000 / rows for rows, seconds in best.items()}


def _threads(setting: int | None, spec: ModelSpec, parameter: str) -> int:
    if setting is not None:
        return setting
    raw = spec.parameters.get(parameter, "").strip()
    return int(raw) if raw.isdigit() else 0


def _resolve(request: _Request, result: dict[str, np.ndarray]) -> None:
    if not request.future.done():
        request.future.set_result(result)


def _failed(model: str, error: Exception) -> InferenceFailed:
    return InferenceFailed(f"{model}: {type(error).__name__}: {error}")
