"""Decoding a window of audio to float32 mono PCM at the sample rate a model expects."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.container import InputContainer
from av.stream import Stream

from ._container import clip_origin, open_media, seek_to, select_stream, stream_end
from ._window import Window, resolve_window
from .errors import ErrorCode, MediaError
from .limits import DEFAULT_LIMITS, MediaLimits

# Seek this far before the window: demuxers that seek by byte estimate (mp3, ogg) can
# land a little late, and the extra audio is cheap to decode and drop.
_SEEK_PREROLL_SECONDS = 0.5

# For float output libswresample does not normalise its downmix matrix, so 5.1 of a
# sound present in every channel would mix to 1.7x full scale. Capping the sum of gains
# at 1 (what FFmpeg does for integer formats) keeps a full-scale input within [-1, 1].
_DOWNMIX_OPTIONS = {"rematrix_maxval": "1.0"}


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32 [num_samples], mono, in [-1, 1]
    sample_rate: int
    start: float  # clip time of samples[0], seconds
    valid_samples: int  # samples[valid_samples:] is zero padding past the end of the clip
    source_sample_rate: int
    source_channels: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def decode_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate: int,
    start: float = 0.0,
    duration: float | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> DecodedAudio:
    """Decode `[start, start + duration)` of the audio track as mono float32 at `sample_rate`.

    With `duration` given the result has exactly `round(duration * sample_rate)` samples,
    zero-padded past the end of the clip; with `duration=None` it runs to the end of the
    clip (at most `limits.max_decode_seconds`). Channels are downmixed and the rate is
    converted by FFmpeg's resampler (`av.AudioResampler`).
    """
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be >= 1, got {sample_rate}")
    with open_media(path, limits) as container:
        stream = select_stream(container, "audio")
        if stream is None:
            raise MediaError(ErrorCode.NO_AUDIO_STREAM, "the file has no decodable audio stream")
        window = resolve_window(start, duration, stream_end(container, stream), limits)
        pcm, pcm_start = _decode_mono(container, stream, window, sample_rate)

    wanted = round(window.duration * sample_rate)
    # Align the decoded audio to the window: drop what precedes it, or, if the stream
    # only begins inside the window, put silence before it.
    offset = round((window.start - pcm_start) * sample_rate)
    if offset >= 0:
        pcm = pcm[offset : offset + wanted]
    else:
        pcm = np.concatenate([np.zeros(-offset, np.float32), pcm])[:wanted]
    valid_samples = len(pcm)
    if window.padded and valid_samples < wanted:
        pcm = np.concatenate([pcm, np.zeros(wanted - valid_samples, np.float32)])
    context = stream.codec_context
    return DecodedAudio(
        samples=np.clip(pcm, -1.0, 1.0),
        sample_rate=sample_rate,
        start=window.start,
        valid_samples=valid_samples,
        source_sample_rate=int(context.sample_rate),
        source_channels=int(context.layout.nb_channels),
    )


def _decode_mono(
    container: InputContainer, stream: Stream, window: Window, sample_rate: int
) -> tuple[np.ndarray, float]:
    """Resampled mono PCM covering the window, and the clip time of its first sample."""
    if window.start > 0:
        seek_to(container, stream, max(0.0, window.start - _SEEK_PREROLL_SECONDS))
    resampler = av.AudioResampler(
        format="flt", layout="mono", rate=sample_rate, options=_DOWNMIX_OPTIONS
    )
    chunks: list[np.ndarray] = []
    pcm_start: float | None = None
    for frame, frame_start in _frames_with_times(container, stream):
        frame_end = frame_start + frame.samples / frame.sample_rate
        if frame_end <= window.start:
            continue  # the seek landed early; this frame is before the window
        if frame_start >= window.end:
            break
        if pcm_start is None:
            pcm_start = frame_start
        chunks.extend(out.to_ndarray()[0] for out in resampler.resample(frame))
    chunks.extend(out.to_ndarray()[0] for out in resampler.resample(None))  # flush
    if pcm_start is None:
        # Nothing decoded in the window: the stream ends before it despite what the
        # container claimed, i.e. the file is truncated.
        raise MediaError(ErrorCode.CORRUPT_MEDIA, "no audio could be decoded in the window")
    pcm = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    return pcm, pcm_start


def _frames_with_times(
    container: InputContainer, stream: Stream
) -> Iterator[tuple[AudioFrame, float]]:
    """Decoded frames with their clip start time; a missing pts continues the previous frame."""
    origin = clip_origin(container)
    next_start: float | None = None
    for packet in container.demux(stream):
        for frame in packet.decode():
            if frame.time is not None:
                start = frame.time - origin
            else:
                start = next_start if next_start is not None else 0.0
            next_start = start + frame.samples / frame.sample_rate
            yield frame, start
