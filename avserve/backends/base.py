"""The one interface the gateway talks to, whatever runs the models.

    backend = EmbeddedBackend(repository_dir, settings)     # onnxruntime in-process
    backend = TritonBackend(grpc_url, settings)             # a Triton server over gRPC
    await backend.start()                                   # load / connect, warm up
    spec = backend.repository.route("zorro_tiny", {"audio"})
    outputs = await backend.infer(spec.name, {"audio": pcm[np.newaxis]}, deadline=...)
    await backend.close()

Inputs and outputs carry the batch dimension (the gateway sends one clip, batch 1; the
backend may batch it with other requests). Errors a client should see as an HTTP status
are the exceptions below; anything else is a bug.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from avserve.repository import Repository

if TYPE_CHECKING:  # stats.py imports the errors from here
    from .stats import BatchPolicy


class BackendError(Exception):
    """Base of the errors a backend reports; `code` is the gateway's machine-readable code."""

    code = "backend_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BackendUnavailable(BackendError):
    """The backend cannot serve now (Triton down or restarting, model not loaded): HTTP 503."""

    code = "backend_unavailable"


class BackendOverloaded(BackendError):
    """The request queue is full: shed the request (HTTP 429 with Retry-After)."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_seconds: float = 1.0):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class BackendTimeout(BackendError):
    """The request's deadline passed before the backend answered: HTTP 504."""

    code = "deadline_exceeded"


class InferenceFailed(BackendError):
    """The model ran and failed on this input (shape/type it should have rejected): HTTP 502."""

    code = "inference_failed"


class InferenceBackend(abc.ABC):
    """What the gateway needs from a model runtime."""

    name: str  # "embedded" | "triton", for logs and metrics

    @abc.abstractmethod
    async def start(self) -> None:
        """Load (embedded) or connect and fetch model configs (Triton); warm up. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release sessions / channels; pending requests fail with BackendUnavailable."""

    @property
    @abc.abstractmethod
    def repository(self) -> Repository:
        """Specs and the family -> modalities route table of the models this backend serves."""

    @abc.abstractmethod
    async def ready(self) -> bool:
        """True when every model of `repository` can answer now (Triton up, models loaded, warmed)."""

    @abc.abstractmethod
    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run `model` on one request. `deadline` is an absolute `time.monotonic()` value.

        `outputs` defaults to every output of the model. Raises the BackendError subclasses.
        """

    def batch_policies(self) -> dict[str, BatchPolicy]:
        """Per model, how this backend batches requests (empty: the backend does not say,
        e.g. Triton, whose dynamic batcher follows each model's config)."""
        return {}
