"""Gateway configuration: every knob is an `AVSERVE_<NAME>` environment variable.

    AVSERVE_REPOSITORY=model_repository AVSERVE_BACKEND=triton avserve serve

`get_settings()` reads the environment once; an app serves `create_app(settings)`'s settings, or
those, and routers receive them through the `dependencies.get_app_settings` dependency.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from avserve.backends.settings import EmbeddedSettings, TritonSettings
from avserve.media import MediaLimits

MiB = 1024 * 1024


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AVSERVE_", extra="ignore", frozen=True)

    # ---- what is served -------------------------------------------------------------------
    repository: Path = Field(Path("model_repository"), description="Model repository directory (embedded backend).")
    backend: Literal["embedded", "triton"] = "embedded"
    triton_url: str = Field("127.0.0.1:8001", description="Triton gRPC address host:port (triton backend).")
    default_model: str | None = Field(
        None, description="Family used when a request names none; default: the only family, else the first by name."
    )
    default_top_k: int = Field(5, ge=1)

    # ---- uploads --------------------------------------------------------------------------
    max_upload_bytes: int = Field(64 * MiB, ge=1, description="Largest clip accepted (HTTP 413 beyond).")
    upload_dir: Path | None = Field(None, description="Where uploads are spooled; default: the system temp dir.")

    # ---- work per request -----------------------------------------------------------------
    request_timeout_seconds: float = Field(30.0, gt=0, description="Deadline of one request, upload included (504).")
    max_windows: int = Field(8, ge=1, description="Most model-length windows one request may average over.")
    frame_sampling: Literal["exact", "fast"] = Field(
        "exact",
        description="Default frame choice (the `sampling` parameter): `exact` frames, or the nearest keyframe (`fast`).",
    )
    max_in_flight_requests: int = Field(
        256, ge=1, description="Classify requests in progress before new ones are shed with 429."
    )
    retry_after_seconds: int = Field(1, ge=1, description="Retry-After sent with 429 and 503.")
    # Probing and decoding run in supervised worker processes (avserve.media.workers).
    decode_workers: int = Field(2, ge=1, description="Worker processes that probe and decode (one per core).")
    decode_memory_mb: int = Field(
        1536, ge=256, description="Address space a decoding worker may use (MiB; an idle worker maps about 230)."
    )
    decode_cpu_seconds: float = Field(60.0, gt=0, description="CPU time one probe or decode may take before it is stopped.")
    # Admission control (avserve.gateway.admission): refuse at once what would wait too long.
    media_queue_factor: float = Field(
        2.0, gt=0, description="Queue at most this many requests' worth of decoding per worker before shedding (429)."
    )
    latency_target_seconds: float | None = Field(
        None, gt=0, description="Shed (429) a request whose predicted wait + decode exceeds this; default: no target."
    )
    backend_ready_timeout_seconds: float = Field(2.0, gt=0, description="How long /readyz waits for the backend.")
    # Response cache (avserve.gateway.response_cache): off by default, like Triton's.
    response_cache_bytes: int = Field(
        0, ge=0, description="Memory for cached /classify answers (LRU, bytes); 0 = no response cache."
    )
    response_cache_ttl_seconds: float | None = Field(
        None, gt=0, description="Forget a cached answer this long after it was stored; default: never (LRU only)."
    )

    # ---- backends (avserve.backends.EmbeddedSettings / TritonSettings) ---------------------
    batch_policy: Literal["measured", "always", "off"] = Field(
        "measured",
        description=(
            "Embedded micro-batching. measured: each model batches up to the size its batch curve, measured at "
            "start-up, says pays; always: up to batch_max_size whatever the curve; off: every request alone."
        ),
    )
    batch_max_size: int = Field(8, ge=1, description="Embedded: rows per micro-batch.")
    batch_max_delay_ms: float = Field(
        2.0, ge=0, description="Embedded: longest hold for a partner, taken only when the arrival rate says one is due."
    )
    batch_pays_below: float = Field(
        0.9, gt=0, description="Embedded: a batch size pays when its time per clip is below this times batch 1's."
    )
    backend_max_queue: int = Field(64, ge=1, description="Embedded: queued requests per model before 429.")
    intra_op_threads: int | None = Field(None, ge=0, description="Embedded: onnxruntime threads per session.")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    triton_startup_timeout_seconds: float = Field(
        30.0, gt=0, description="Triton: how long start-up waits for the server before serving not-ready."
    )
    triton_max_in_flight: int = Field(256, ge=1, description="Triton: requests awaiting the server per model before 429.")

    # ---- media limits (avserve.media.MediaLimits) -----------------------------------------
    max_streams: int = Field(16, ge=1)
    max_frame_pixels: int = Field(4096 * 2304, ge=1)
    max_duration_seconds: float = Field(6 * 3600.0, gt=0)
    max_decode_seconds: float = Field(60.0, gt=0)
    max_bad_packets: int = Field(
        16, ge=0, description="Damaged packets skipped per stream and decoded window before 422 too_many_bad_packets."
    )
    max_bad_packet_bytes: int = Field(1024 * 1024, ge=0, description="Their bytes, likewise.")

    # ---- access -----------------------------------------------------------------------------
    # Comma-separated (or a JSON list). Empty: no authentication. With keys, /metrics and the
    # OpenAPI docs need one too (auth.OperatorAccessMiddleware), unless served on metrics_port.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description="Serve /metrics on this port only, without credentials (avserve serve); default: on the main port.",
    )  # fmt: skip

    # ---- HTTP layer (avserve serve: avserve/gateway/server.py) -------------------------------
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="A request's line and headers must arrive within this (408, connection closed)."
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=4096, description="Largest request line + headers accepted (431 beyond)."
    )

    # ---- logs ---------------------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return tuple(json.loads(text))
            return tuple(key.strip() for key in text.split(",") if key.strip())
        return value

    def embedded_settings(self) -> EmbeddedSettings:
        return EmbeddedSettings(
            micro_batching=self.batch_policy != "off",
            follow_batch_curve=self.batch_policy == "measured",
            batch_pays_below=self.batch_pays_below,
            max_batch_size=self.batch_max_size,
            max_delay_ms=self.batch_max_delay_ms,
            max_queue=self.backend_max_queue,
            intra_op_threads=self.intra_op_threads,
            device=self.device,
        )

    def triton_settings(self) -> TritonSettings:
        return TritonSettings(
            startup_timeout=self.triton_startup_timeout_seconds,
            request_timeout=self.request_timeout_seconds,
            max_in_flight=self.triton_max_in_flight,
        )

    @property
    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            max_file_bytes=self.max_upload_bytes,
            max_streams=self.max_streams,
            max_frame_pixels=self.max_frame_pixels,
            max_duration_seconds=self.max_duration_seconds,
            max_decode_seconds=self.max_decode_seconds,
            max_bad_packets=self.max_bad_packets,
            max_bad_packet_bytes=self.max_bad_packet_bytes,
        )


@lru_cache
def get_settings() -> GatewaySettings:
    """The process's settings, read once from the environment."""
    return GatewaySettings()
