"""Settings of the two backends: plain frozen dataclasses the gateway maps its pydantic
settings onto. Importing this module pulls in neither onnxruntime nor gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EmbeddedSettings:
    """Knobs of the embedded backend (the gateway maps its own settings onto these)."""

    micro_batching: bool = True  # False: every request runs alone (benchmark baseline)
    max_batch_size: int = 8  # rows per session run; capped by each model's max_batch_size
    # Longest wait for a partner after a request reached an idle model; the wait happens only
    # when the model's arrival rate says a partner is due (see embedded.py's docstring).
    max_delay_ms: float = 2.0
    # Warm-up measures each model's batch curve (ms per clip at batch 1, 2, 4, 8) and caps its
    # rows at the largest batch whose per-clip time is below `batch_pays_below` x batch 1's
    # (none: the model never batches). False: rows up to max_batch_size whatever the curve.
    follow_batch_curve: bool = True
    batch_pays_below: float = 0.9
    # Start-up time measuring one model's curve may take (a slow model still gets batch 1 and
    # its largest batch, once); 0: no curve (rows up to max_batch_size, no waiting for partners).
    batch_curve_seconds: float = 1.0
    max_queue: int = 64  # queued requests per model before shedding with BackendOverloaded
    batches_in_flight: int = 1  # concurrent session runs per model (1 = batches form under load)
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # auto: CUDA when onnxruntime-gpu has it
    cuda_device_id: int = 0
    # None: the model's `intra_op_thread_count`/`inter_op_thread_count` parameters, else 0
    # (onnxruntime picks one thread per physical core).
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    # onnxruntime's worker threads busy-spin after a run to cut latency; on shared cores that
    # steals CPU from the event loop and other models, so it is off unless asked for.
    allow_spinning: bool = False
    # Runs at batch 1 and at the largest batch before serving, then the batch curve's runs
    # (without warm-up there is no curve: rows up to max_batch_size, no waiting for partners).
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue < 1 or self.batches_in_flight < 1:
            raise ValueError("max_batch_size, max_queue and batches_in_flight must be >= 1")
        if self.max_delay_ms < 0:
            raise ValueError("max_delay_ms must be >= 0")
        if self.batch_pays_below <= 0 or self.batch_curve_seconds < 0:
            raise ValueError("batch_pays_below must be > 0 and batch_curve_seconds >= 0")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu, cuda or auto, not {self.device!r}")


@dataclass(frozen=True)
class TritonSettings:
    """Knobs of the Triton (gRPC) backend."""

    # start() waits this long for the server and its models to be ready, then gives up with
    # BackendUnavailable (the gateway may start anyway and let ready() turn true later).
    startup_timeout: float = 30.0
    # Bound of every control call (health, index, config, stats): ready() never hangs longer.
    control_timeout: float = 2.0
    # Per-request gRPC timeout when the caller gives no deadline (with one: the time left).
    request_timeout: float = 30.0
    # gRPC caps messages at 4 MiB by default; one 32x224x224x3 uint8 clip is 4.8 MB.
    max_message_bytes: int = 256 * 1024 * 1024
    # Requests awaiting Triton at once, per model, before shedding with BackendOverloaded
    # (Triton's own queue is unbounded unless the config sets max_queue_size).
    max_in_flight: int = 256
    # Serve only these models (default: every model in Triton's repository index).
    models: tuple[str, ...] | None = None
    # Fetch labels through the classification extension at start-up (see triton.py).
    fetch_labels: bool = True
    # While the server is away, ready() probes it at most this often (cheap fast failures).
    reconnect_interval: float = 0.5

    def __post_init__(self) -> None:
        if min(self.startup_timeout, self.control_timeout, self.request_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_in_flight < 1 or self.max_message_bytes < 4 * 1024 * 1024:
            raise ValueError("max_in_flight must be >= 1 and max_message_bytes >= 4 MiB")
