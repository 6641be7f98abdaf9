"""The one exception this package raises for bad input, with a stable machine-readable code.

Callers (the gateway, dataset readers) branch on `MediaError.code`, never on message text,
so the code values below are part of the public contract: add new ones, never rename.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    EMPTY_FILE = "empty_file"
    FILE_TOO_LARGE = "file_too_large"
    # The path itself is unusable (missing, a directory, no permission): a caller bug or a
    # server fault rather than a bad upload.
    FILE_NOT_READABLE = "file_not_readable"
    UNSUPPORTED_MEDIA = "unsupported_media"
    CORRUPT_MEDIA = "corrupt_media"
    NO_DECODABLE_STREAM = "no_decodable_stream"
    NO_AUDIO_STREAM = "no_audio_stream"
    NO_VIDEO_STREAM = "no_video_stream"
    TOO_MANY_STREAMS = "too_many_streams"
    FRAME_TOO_LARGE = "frame_too_large"
    DURATION_TOO_LONG = "duration_too_long"
    INVALID_WINDOW = "invalid_window"
    # More packets of a stream failed to decode than MediaLimits.max_bad_packets (or their
    # bytes exceed max_bad_packet_bytes); fewer are skipped and reported, like FFmpeg does.
    TOO_MANY_BAD_PACKETS = "too_many_bad_packets"
    # The decoding process died on this file (a decoder crash), or it took more memory or CPU
    # time than a worker is allowed (avserve.media.workers): the file, not the server, is blamed.
    DECODER_CRASHED = "decoder_crashed"
    DECODE_MEMORY_LIMIT = "decode_memory_limit"
    DECODE_CPU_LIMIT = "decode_cpu_limit"


class MediaError(Exception):
    """A media file could not be used; `code` says why, `message` says it to a human."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = ErrorCode(code)
        self.message = message

    def __reduce__(self):
        # Raised in a decoding worker process and re-raised in the gateway: pickle by fields.
        return (type(self), (self.code, self.message))

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}
