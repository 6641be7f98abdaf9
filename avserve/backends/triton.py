"""Triton Inference Server backend over gRPC (`tritonclient.grpc.aio`).

    backend = TritonBackend("localhost:8001", TritonSettings())
    await backend.start()        # waits (bounded) for the server, reads every model's config
    out = await backend.infer("zorro_tiny_av", {"audio": ..., "video": ...}, deadline=t)

Model specs come from Triton itself: the repository index names the models and
`get_model_config` gives each config, decoded by `ModelSpec.from_model_config` exactly as
the embedded backend decodes `config.pbtxt`. Triton's config API exposes the labels file's
*name* but not its content, so labels are read through Triton's classification extension:
one request per model at start-up asks for the answer output with
`class_count = num_classes` on a zero input, and Triton answers every class as
`"score:index:label"`, from the very labels file it serves.

Batching is Triton's (dynamic batching in the model config): each `infer` is one gRPC
request. The backend adds a per-request gRPC deadline from the caller's deadline, a bound on
requests awaiting Triton per model (`max_in_flight`, shed with `BackendOverloaded`), and
error mapping:

    UNAVAILABLE, NOT_FOUND, CANCELLED, channel closed  -> BackendUnavailable
    DEADLINE_EXCEEDED                                  -> BackendTimeout
    RESOURCE_EXHAUSTED, "Exceeds maximum queue size"   -> BackendOverloaded
    INVALID_ARGUMENT, INTERNAL (the model's error) ... -> InferenceFailed

Recovery: gRPC channels reconnect by themselves, and the reconnect backoff is capped at
one second (gRPC's default grows to two minutes, which would keep a restarted server
unused for that long). When a call fails because the server is unreachable, the client
is also replaced by a fresh one (at most every `reconnect_interval`), whose first call
connects at once. `ready()` probes server and model readiness within `control_timeout`,
and after an outage re-reads the model list, configs and labels before it answers True,
so models configured while the server was away are picked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from avserve.repository import ModelSpec, Repository, RepositoryError

from ._inputs import check_request
from .base import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    InferenceBackend,
    InferenceFailed,
)
from .settings import TritonSettings
from .stats import ModelStats, _Counters

log = logging.getLogger(__name__)

# Capped so a restarted server is found within a second (gRPC's default cap is 120 s).
RECONNECT_BACKOFF = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
MIN_RETRY_AFTER_SECONDS = 0.05
# Statuses meaning "the server (or this model) is not there now", as tritonclient spells them.
UNAVAILABLE_STATUSES = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND", "StatusCode.CANCELLED"})
# gRPC core's words for a lost or refused connection, as opposed to Triton's own UNAVAILABLE
# answers ("Server not ready", ...) which come over a healthy channel that must be kept.
TRANSPORT_FAILURES = ("failed to connect", "Socket closed", "Connection reset", "Broken pipe")


class TritonBackend(InferenceBackend):
    name = "triton"

    def __init__(self, url: str, settings: TritonSettings | None = None) -> None:
        # tritonclient.grpc takes host:port; accept a grpc:// URL too.
        self.url = url.removeprefix("grpc://")
        self.settings = settings or TritonSettings()
        self._client: InferenceServerClient | None = None
        self._client_created = 0.0
        self._repository = Repository.from_specs([])
        self._counters: dict[str, _Counters] = {}
        self._latency: dict[str, float] = {}  # moving average per model, for retry-after hints
        self._start_lock = asyncio.Lock()
        self._refresh_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._stale = True  # the specs must be re-read before ready() says True

    # ---- InferenceBackend ------------------------------------------------------------------

    @property
    def repository(self) -> Repository:
        return self._repository

    async def start(self) -> None:
        async with self._start_lock:
            if self._closed:
                raise BackendUnavailable("the Triton backend is closed")
            if self._started:
                return
            give_up = time.monotonic() + self.settings.startup_timeout
            problem = "no answer"
            while True:
                try:
                    async with asyncio.timeout(max(0.1, give_up - time.monotonic())):
                        if await self._server_ready():
                            await self._refresh()
                            break
                        problem = "server not ready"
                except (BackendError, TimeoutError) as error:
                    problem = str(error) or type(error).__name__
                if time.monotonic() >= give_up:
                    raise BackendUnavailable(
                        f"Triton at {self.url} was not ready within {self.settings.startup_timeout:g} s: {problem}"
                    )
                await asyncio.sleep(self.settings.reconnect_interval)
            self._started = True
            log.info("triton backend at %s serving %s", self.url, sorted(self._repository.models))

    async def close(self) -> None:
        # In-flight calls on the closed channel fail and are reported as BackendUnavailable.
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def ready(self) -> bool:
        if self._closed or not self._started:
            return False
        try:
            # Each call has its own gRPC deadline; this caps the whole probe (and a refresh).
            async with asyncio.timeout(3 * self.settings.control_timeout):
                if not await self._server_ready():
                    return False
                if self._stale:
                    await self._refresh()
                names = list(self._repository.models)
                client = self._connected_client()
                timeout = self.settings.control_timeout
                with self._mapped_errors(client, "readiness"):
                    answers = await asyncio.gather(*(client.is_model_ready(n, client_timeout=timeout) for n in names))
                return bool(names) and all(answers)
        except (BackendError, TimeoutError) as error:
            log.debug("triton not ready: %s", error)
            return False

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        if self._closed or not self._started:
            raise BackendUnavailable("the Triton backend is " + ("closed" if self._closed else "not started"))
        spec = self._repository.models.get(model)
        if spec is None:
            raise BackendUnavailable(f"model {model!r} is not served by Triton (have {sorted(self._repository.models)})")
        counters = self._counters.setdefault(model, _Counters())
        try:
            return await self._infer(spec, counters, inputs, outputs, deadline)
        except BackendError as error:
            counters.count(error)
            raise

    # ---- metrics ---------------------------------------------------------------------------

    def stats(self) -> dict[str, ModelStats]:
        """Per-model counters; `queue_depth` and `in_flight` are requests awaiting Triton.
        Batch sizes are Triton's own (its metrics endpoint and `get_inference_statistics`)."""
        return {name: self._counters.get(name, _Counters()).snapshot() for name in self._repository.models}

    # ---- inference ---------------------------------------------------------------------------

    async def _infer(
        self,
        spec: ModelSpec,
        counters: _Counters,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None,
        deadline: float | None,
    ) -> dict[str, np.ndarray]:
        _, wanted = check_request(spec, inputs, outputs)
        began = time.monotonic()
        timeout = self.settings.request_timeout if deadline is None else deadline - began
        if timeout <= 0:
            raise BackendTimeout(f"deadline passed before {spec.name!r} was sent to Triton")
        if counters.in_flight >= self.settings.max_in_flight:
            raise BackendOverloaded(
                f"{spec.name!r}: {counters.in_flight} requests await Triton (max_in_flight {self.settings.max_in_flight})",
                retry_after_seconds=self._retry_after(spec.name),
            )
        request_inputs = []
        for tensor in spec.inputs:
            array = np.ascontiguousarray(inputs[tensor.name])
            infer_input = InferInput(tensor.name, list(array.shape), np_to_triton_dtype(array.dtype))
            infer_input.set_data_from_numpy(array)
            request_inputs.append(infer_input)
        requested = [InferRequestedOutput(name) for name in wanted]

        counters.requests += 1
        counters.in_flight += 1
        counters.queue_depth += 1
        try:
            result = await self._call(spec.name, request_inputs, requested, began + timeout)
        finally:
            counters.in_flight -= 1
            counters.queue_depth -= 1
        answer = {name: result.as_numpy(name) for name in wanted}
        missing = [name for name, array in answer.items() if array is None]
        if missing:
            raise InferenceFailed(f"{spec.name}: Triton's answer lacks outputs {missing}")
        counters.completed += 1
        seconds = time.monotonic() - began
        self._latency[spec.name] = 0.8 * self._latency.get(spec.name, seconds) + 0.2 * seconds
        return answer

    async def _call(
        self, model: str, inputs: list[InferInput], outputs: list[InferRequestedOutput], deadline: float
    ) -> Any:
        """One gRPC inference; a connection failure is retried once on a fresh channel."""
        for attempt in (1, 2):
            client = self._connected_client()
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise BackendTimeout(f"deadline passed before {model!r} was sent to Triton")
            try:
                with self._mapped_errors(client, model):
                    return await client.infer(model, inputs, outputs=outputs, client_timeout=timeout)
            except BackendUnavailable as error:
                # "failed to connect": the request never reached a server, so resending is
                # safe; a fresh channel connects at once where the old one may sit in backoff
                # (the server just came back). Only when the failure replaced the client.
                if attempt == 1 and "failed to connect" in error.message and self._client is not client:
                    continue
                raise
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _mapped_errors(self, client: InferenceServerClient, what: str) -> Iterator[None]:
        """Turn tritonclient's and gRPC's exceptions into BackendErrors."""
        try:
            yield
        except InferenceServerException as error:
            raise self._error(error, client, what) from None
        except (grpc.RpcError, grpc.aio.UsageError) as error:
            # The channel was closed under the call (backend closed, or client replaced).
            raise BackendUnavailable(f"{what}: connection to Triton lost: {error}") from None
        except asyncio.CancelledError:
            # gRPC cancels the calls of a channel that is closed under them (a lost server's
            # client replaced by another request): Triton went away, not this request. Only a
            # cancellation of our own task (a deadline, a client that left) goes on as one.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise BackendUnavailable(f"{what}: connection to Triton lost (the call was cancelled)") from None

    def _retry_after(self, model: str) -> float:
        """A recent request's latency: about when the requests ahead will have been answered."""
        return round(max(MIN_RETRY_AFTER_SECONDS, self._latency.get(model, 0.1)), 3)

    def _error(self, error: InferenceServerException, client: InferenceServerClient, model: str) -> BackendError:
        status = error.status() or ""
        message = f"{model}: {error.message() or error}"
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return BackendTimeout(message)
        if "maximum queue size" in message:  # Triton's own queue (max_queue_size) is full
            return BackendOverloaded(message, retry_after_seconds=self._retry_after(model))
        if status == "StatusCode.RESOURCE_EXHAUSTED":
            if "larger than max" in message:  # a message over max_message_bytes: this request's fault
                return InferenceFailed(message)
            return BackendOverloaded(message, retry_after_seconds=self._retry_after(model))
        if status in UNAVAILABLE_STATUSES or status == "":
            if status == "StatusCode.UNAVAILABLE":
                self._stale = True  # re-read the specs once the server answers again
                if any(sign in message for sign in TRANSPORT_FAILURES):
                    self._connection_lost(client)
            return BackendUnavailable(message)
        return InferenceFailed(message)  # INVALID_ARGUMENT, INTERNAL (the model raised), ...

    # ---- connection and specs ------------------------------------------------------------------

    def _connected_client(self) -> InferenceServerClient:
        if self._closed:
            raise BackendUnavailable("the Triton backend is closed")
        if self._client is None:
            size = self.settings.max_message_bytes
            self._client = InferenceServerClient(
                self.url,
                channel_args=[
                    ("grpc.max_send_message_length", size),
                    ("grpc.max_receive_message_length", size),
                    *RECONNECT_BACKOFF,
                    # gRPC shares subchannels between channels to the same target by default,
                    # so a "fresh" client would inherit the old one's connection backoff.
                    ("grpc.use_local_subchannel_pool", 1),
                ],
            )
            self._client_created = time.monotonic()
        return self._client

    def _connection_lost(self, client: InferenceServerClient) -> None:
        """The server is unreachable: use a fresh channel (its first call connects at once
        instead of waiting out the old one's reconnect backoff)."""
        if client is not self._client or time.monotonic() - self._client_created < self.settings.reconnect_interval:
            return
        self._client = None
        # Calls still on the old channel are failing anyway; close it in the background.
        task = asyncio.get_running_loop().create_task(client.close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _server_ready(self) -> bool:
        client = self._connected_client()
        with self._mapped_errors(client, "server"):
            return bool(await client.is_server_ready(client_timeout=self.settings.control_timeout))

    async def _refresh(self) -> None:
        """Read the model list, every config and every model's labels from Triton."""
        async with self._refresh_lock:
            client = self._connected_client()
            timeout = self.settings.control_timeout
            with self._mapped_errors(client, "repository"):
                index = await client.get_model_repository_index(as_json=True, client_timeout=timeout)
                entries = {entry["name"]: entry for entry in index.get("models", []) if entry.get("state") == "READY"}
                names = list(self.settings.models) if self.settings.models is not None else sorted(entries)
                missing = [name for name in names if name not in entries]
                if missing:
                    raise BackendUnavailable(f"Triton has not loaded {missing}")
                specs = [await self._read_spec(client, name, entries[name]) for name in names]
            try:
                repository = Repository.from_specs(specs)
            except RepositoryError as error:
                raise BackendUnavailable(f"Triton's models break the contract: {error}") from error
            if set(repository.models) != set(self._repository.models):
                log.info("triton models: %s", sorted(repository.models))
            self._repository = repository
            self._stale = False

    async def _read_spec(self, client: InferenceServerClient, name: str, entry: Mapping[str, Any]) -> ModelSpec:
        config = await client.get_model_config(name, as_json=True, client_timeout=self.settings.control_timeout)
        version = str(entry.get("version", ""))
        versions = [int(version)] if version.isdigit() else []
        try:
            spec = ModelSpec.from_model_config(config, versions=versions)
            labels = await self._fetch_labels(client, spec) if self.settings.fetch_labels else None
            return ModelSpec.from_model_config(config, labels=labels, versions=versions)
        except RepositoryError as error:
            raise BackendUnavailable(f"Triton's config of {name!r} breaks the contract: {error}") from error

    async def _fetch_labels(self, client: InferenceServerClient, spec: ModelSpec) -> list[str] | None:
        """The answer output's labels, through the classification extension (see module doc)."""
        answer = spec.output(spec.answer_output)
        if not answer.label_filename:
            return None
        num_classes = answer.dims[-1]
        request_inputs = []
        for name, zeros in spec.zero_inputs(rows=1).items():
            infer_input = InferInput(name, list(zeros.shape), np_to_triton_dtype(zeros.dtype))
            infer_input.set_data_from_numpy(zeros)
            request_inputs.append(infer_input)
        result = await client.infer(
            spec.name,
            request_inputs,
            outputs=[InferRequestedOutput(answer.name, class_count=num_classes)],
            client_timeout=self.settings.request_timeout,
        )
        return parse_classification(result.as_numpy(answer.name), num_classes, spec.name)


def parse_classification(entries: np.ndarray | None, num_classes: int, model: str) -> list[str]:
    """Labels by class index from Triton's `"score:index:label"` classification strings."""
    if entries is None:
        raise RepositoryError(f"{model}: Triton returned no classification output")
    labels: dict[int, str] = {}
    for entry in np.asarray(entries).reshape(-1)[:num_classes]:
        text = entry.decode("utf-8") if isinstance(entry, bytes) else str(entry)
        parts = text.split(":", 2)  # a label may itself contain ':'
        if len(parts) != 3:
            raise RepositoryError(f"{model}: Triton classified without labels ({text!r}); is its labels file empty?")
        labels[int(parts[1])] = parts[2]
    if sorted(labels) != list(range(num_classes)):
        raise RepositoryError(f"{model}: Triton's classification covers classes {sorted(labels)}, not 0..{num_classes - 1}")
    return [labels[index] for index in range(num_classes)]

