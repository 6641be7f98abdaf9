"""Model runtimes behind one interface (`InferenceBackend`, see `base.py`).

    backend = create_backend("embedded", repository_dir="model_repository")
    backend = create_backend("triton", url="localhost:8001", settings=TritonSettings())

`embedded` runs onnxruntime in-process with micro-batching; `triton` talks to a Triton
server over gRPC. Both expose `stats()` -> {model: ModelStats} for metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .base import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    InferenceBackend,
    InferenceFailed,
)
from .settings import EmbeddedSettings, TritonSettings
from .stats import BatchEvent, BatchListener, BatchPolicy, ModelStats

BACKEND_KINDS = ("embedded", "triton")


def create_backend(
    kind: Literal["embedded", "triton"],
    *,
    repository_dir: Path | str | None = None,
    url: str | None = None,
    settings: EmbeddedSettings | TritonSettings | None = None,
    on_batch: BatchListener | None = None,
) -> InferenceBackend:
    """Build (not start) a backend: `embedded` needs `repository_dir`, `triton` needs `url`
    (gRPC `host:port`). `on_batch` is the embedded backend's per-batch listener.

    The implementations are imported here, so a gateway that serves only one kind never
    loads the other's runtime.
    """
    if kind == "embedded":
        if repository_dir is None:
            raise ValueError("the embedded backend needs repository_dir")
        if settings is not None and not isinstance(settings, EmbeddedSettings):
            raise TypeError(f"the embedded backend takes EmbeddedSettings, not {type(settings).__name__}")
        from .embedded import EmbeddedBackend

        return EmbeddedBackend(repository_dir, settings, on_batch=on_batch)
    if kind == "triton":
        if url is None:
            raise ValueError("the triton backend needs url (gRPC host:port)")
        if settings is not None and not isinstance(settings, TritonSettings):
            raise TypeError(f"the triton backend takes TritonSettings, not {type(settings).__name__}")
        from .triton import TritonBackend

        return TritonBackend(url, settings)
    raise ValueError(f"backend kind must be one of {BACKEND_KINDS}, not {kind!r}")


def __getattr__(name: str) -> object:
    # `from avserve.backends import EmbeddedBackend` works without importing both runtimes eagerly.
    if name == "EmbeddedBackend":
        from .embedded import EmbeddedBackend

        return EmbeddedBackend
    if name == "TritonBackend":
        from .triton import TritonBackend

        return TritonBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKEND_KINDS",
    "BackendError",
    "BackendOverloaded",
    "BackendTimeout",
    "BackendUnavailable",
    "BatchEvent",
    "BatchPolicy",
    "BatchListener",
    "EmbeddedBackend",
    "EmbeddedSettings",
    "InferenceBackend",
    "InferenceFailed",
    "ModelStats",
    "TritonBackend",
    "TritonSettings",
    "create_backend",
]
