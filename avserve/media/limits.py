"""Input limits: what a single clip may cost us before we refuse it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    # Checked before FFmpeg sees a single byte.
    max_file_bytes: int = 256 * 1024 * 1024
    # Checked right after the container header is read.
    max_streams: int = 16
    max_frame_pixels: int = 4096 * 2304
    max_duration_seconds: float = 6 * 3600.0
    # The longest window decode_audio/decode_video will decode in one call: this, not the
    # length of the file, bounds the decoding time of a request.
    max_decode_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_streams", "max_frame_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"MediaLimits.{name} must be >= 1")
        for name in ("max_duration_seconds", "max_decode_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MediaLimits.{name} must be > 0")


DEFAULT_LIMITS = MediaLimits()
