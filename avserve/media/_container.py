"""Opening a container safely: limit checks, stream choice, and the clip's timeline.

Everything PyAV or the OS can raise while a file is open is turned into a `MediaError`
here, so the public functions never leak a bare FFmpeg exception.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import av
import av.error
from av.container import InputContainer
from av.stream import Disposition, Stream

from .errors import ErrorCode, MediaError
from .limits import MediaLimits

StreamKind = Literal["audio", "video"]

# Errors PyAV raises for broken input. av.error.FFmpegError covers every AVERROR; the
# others come from PyAV's own checks (e.g. a resampler fed a frame whose layout changed)
# and from the OS while reading.
_DECODE_ERRORS = (av.error.FFmpegError, OSError, EOFError, ValueError, MemoryError)

# FFmpeg reports "Invalid data found" both for files that are not media at all and for a
# recognised container that is broken (an mp4 cut before its index). The leading bytes of
# the formats we expect tell the two apart: (offset, magic).
_CONTAINER_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # ISO BMFF: mp4, mov, m4a, 3gp
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"wide"),
    (4, b"free"),
    (0, b"\x1a\x45\xdf\xa3"),  # EBML: Matroska, WebM
    (0, b"RIFF"),  # AVI, WAV
    (0, b"OggS"),
    (0, b"fLaC"),
    (0, b"ID3"),  # MP3 with an ID3v2 tag
    (0, b"FLV"),
)


def file_size(path: Path, limits: MediaLimits) -> int:
    """Size of `path` in bytes, refusing empty, oversized and unreadable files."""
    try:
        if not path.is_file():
            raise MediaError(ErrorCode.FILE_NOT_READABLE, f"not a regular file: {path}")
        size = path.stat().st_size
        if not os.access(path, os.R_OK):
            raise MediaError(ErrorCode.FILE_NOT_READABLE, f"no read permission: {path}")
    except OSError as exc:
        raise MediaError(ErrorCode.FILE_NOT_READABLE, f"cannot read {path}: {exc}") from exc
    if size == 0:
        raise MediaError(ErrorCode.EMPTY_FILE, "the file is empty")
    if size > limits.max_file_bytes:
        raise MediaError(
            ErrorCode.FILE_TOO_LARGE,
            f"the file has {size} bytes, more than the limit of {limits.max_file_bytes}",
        )
    return size


@contextmanager
def open_media(path: str | os.PathLike[str], limits: MediaLimits) -> Iterator[InputContainer]:
    """Open `path` for decoding, enforce the container-level limits, close it afterwards.

    Any PyAV/OS error raised inside the `with` body is reported as CORRUPT_MEDIA: by then
    the container was recognised, so a failure means its content is broken.
    """
    path = Path(path)
    file_size(path, limits)
    container = _open(path)
    try:
        check_container_limits(container, limits)
        yield container
    except MediaError:
        raise
    except _DECODE_ERRORS as exc:
        raise MediaError(ErrorCode.CORRUPT_MEDIA, f"decoding failed: {exc}") from exc
    finally:
        container.close()


def _open(path: Path) -> InputContainer:
    try:
        # Metadata of hostile files is not always valid UTF-8; a tag is not worth a failure.
        return av.open(str(path), mode="r", metadata_errors="replace")
    except (PermissionError, IsADirectoryError, FileNotFoundError) as exc:
        raise MediaError(ErrorCode.FILE_NOT_READABLE, f"cannot read {path}: {exc}") from exc
    except _DECODE_ERRORS as exc:
        if _has_container_signature(path):
            raise MediaError(
                ErrorCode.CORRUPT_MEDIA, f"the container is damaged or truncated: {exc}"
            ) from exc
        raise MediaError(
            ErrorCode.UNSUPPORTED_MEDIA, "not an audio or video file FFmpeg can read"
        ) from exc


def _has_container_signature(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            header = file.read(16)
    except OSError:
        return False
    return any(header[offset : offset + len(magic)] == magic for offset, magic in _CONTAINER_SIGNATURES)


def check_container_limits(container: InputContainer, limits: MediaLimits) -> None:
    stream_count = len(container.streams)
    if stream_count > limits.max_streams:
        raise MediaError(
            ErrorCode.TOO_MANY_STREAMS,
            f"the file has {stream_count} streams, more than the limit of {limits.max_streams}",
        )
    duration = container_duration(container)
    if duration is not None and duration > limits.max_duration_seconds:
        raise MediaError(
            ErrorCode.DURATION_TOO_LONG,
            f"the file lasts {duration:.1f} s, more than the limit of "
            f"{limits.max_duration_seconds:.0f} s",
        )
    for stream in container.streams.video:
        context = stream.codec_context
        if context is not None:
            check_frame_pixels(context.width, context.height, limits)


def check_frame_pixels(width: int, height: int, limits: MediaLimits) -> None:
    if width * height > limits.max_frame_pixels:
        raise MediaError(
            ErrorCode.FRAME_TOO_LARGE,
            f"frames of {width}x{height} exceed the limit of {limits.max_frame_pixels} pixels",
        )


def select_stream(container: InputContainer, kind: StreamKind) -> Stream | None:
    """The stream of `kind` we decode: the default-flagged one, else the first.

    Streams PyAV has no decoder for are skipped, and so are attached pictures (cover art
    in an mp3/m4a is a one-frame "video" stream, not video content).
    """
    candidates = [
        stream
        for stream in getattr(container.streams, kind)
        if stream.codec_context is not None
        and not stream.disposition & Disposition.attached_pic
    ]
    for stream in candidates:
        if stream.disposition & Disposition.default:
            return stream
    return candidates[0] if candidates else None


# --- The clip's timeline ------------------------------------------------------------
# Clip time 0 is the container's start time, shared by all streams, so an audio window
# and a video window with the same `start` cover the same moment.


def container_duration(container: InputContainer) -> float | None:
    if container.duration is None or container.duration <= 0:
        return None
    return container.duration / av.time_base


def clip_origin(container: InputContainer) -> float:
    """Absolute stream time (seconds) of clip time 0."""
    if container.start_time is None:
        return 0.0
    return container.start_time / av.time_base


def stream_duration(stream: Stream) -> float | None:
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    # Matroska/WebM have no per-track duration field; muxers (FFmpeg, mkvmerge) write a
    # DURATION tag instead. Without it we would fall back to the container's duration,
    # which is that of the longest stream (often the audio) and misplaces video samples.
    return _parse_duration_tag(stream.metadata.get("DURATION"))


def _parse_duration_tag(tag: str | None) -> float | None:
    """Seconds from a Matroska tag like "00:01:02.500000000"."""
    if not tag:
        return None
    try:
        hours, minutes, seconds = tag.split(":")
        value = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def stream_end(container: InputContainer, stream: Stream) -> float | None:
    """Clip time at which `stream` ends, from its own duration if the container has one."""
    duration = stream_duration(stream)
    if duration is None:
        return container_duration(container)
    start = 0.0
    if stream.start_time is not None and stream.time_base is not None:
        start = float(stream.start_time * stream.time_base) - clip_origin(container)
    return start + duration


def seek_to(container: InputContainer, stream: Stream, clip_time: float) -> None:
    """Seek so that the next packets of `stream` start at a keyframe at or before `clip_time`."""
    assert stream.time_base is not None
    absolute = clip_time + clip_origin(container)
    container.seek(int(absolute / stream.time_base), stream=stream, backward=True)
