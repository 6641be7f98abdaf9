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
    # Damaged packets a stream may have before we refuse it, per stream and per call (the
    # probe, one decoded window). FFmpeg's tools skip a packet their decoder rejects and go
    # on; we do too, so one bad AC-3 frame costs 32 ms of audio, not the whole track. The
    # bounds keep an answer from resting on a stream that is mostly damage: 16 packets is
    # well above the "isolated" few of a real-world damaged file (0.3-0.5 s of AAC or AC-3
    # audio, 0.6 s of 25 fps video), 1 MiB a few damaged HD keyframes. 0 fails at the first
    # bad packet. Skipped packets are reported with the result.
    max_bad_packets: int = 16
    max_bad_packet_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_streams", "max_frame_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"MediaLimits.{name} must be >= 1")
        for name in ("max_bad_packets", "max_bad_packet_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"MediaLimits.{name} must be >= 0")
        for name in ("max_duration_seconds", "max_decode_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MediaLimits.{name} must be > 0")


DEFAULT_LIMITS = MediaLimits()
