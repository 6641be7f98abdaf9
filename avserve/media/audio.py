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
from ._packets import PacketSkipper
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

# FFmpeg's sample formats (without the planar "p"), for writing silence in a decoder's format.
_SAMPLE_DTYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "s64": np.int64, "flt": np.float32, "dbl": np.float64}


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32 [num_samples], mono, in [-1, 1]
    sample_rate: int
    start: float  # clip time of samples[0], seconds
    valid_samples: int  # samples[valid_samples:] is zero padding past the end of the clip
    source_sample_rate: int
    source_channels: int
    # Packets that failed to decode and were skipped (FFmpeg's behaviour, bounded by
    # MediaLimits.max_bad_packets / max_bad_packet_bytes); the time they covered is silence.
    skipped_packets: int = 0
    skipped_bytes: int = 0

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
    converted by FFmpeg's resampler (`av.AudioResampler`). Packets that fail to decode are
    skipped and counted, up to the limits (then TOO_MANY_BAD_PACKETS).
    """
    with open_media(path, limits) as container:
        return decode_audio_from(container, sample_rate=sample_rate, start=start, duration=duration, limits=limits)


def decode_audio_from(
    container: InputContainer,
    *,
    sample_rate: int,
    start: float = 0.0,
    duration: float | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> DecodedAudio:
    """`decode_audio` on a container opened with `open_media`, read from its start (a window
    that starts later seeks). Use a fresh container: FFmpeg's AAC decoder keeps some state
    across a flush, so audio decoded after a probe on the same container differs (by up to
    1e-3) from what training decoded."""
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be >= 1, got {sample_rate}")
    stream = select_stream(container, "audio")
    if stream is None:
        raise MediaError(ErrorCode.NO_AUDIO_STREAM, "the file has no decodable audio stream")
    window = resolve_window(start, duration, stream_end(container, stream), limits)
    skipper = PacketSkipper("audio", limits)
    pcm, pcm_start = _decode_mono(container, stream, window, sample_rate, skipper)

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
        skipped_packets=skipper.packets,
        skipped_bytes=skipper.bytes,
    )


def _decode_mono(
    container: InputContainer, stream: Stream, window: Window, sample_rate: int, skipper: PacketSkipper
) -> tuple[np.ndarray, float]:
    """Resampled mono PCM covering the window, and the clip time of its first sample."""
    if window.start > 0:
        seek_to(container, stream, max(0.0, window.start - _SEEK_PREROLL_SECONDS))
    resampler = _MonoResampler(sample_rate)
    chunks: list[np.ndarray] = []
    pcm_start: float | None = None
    fed_until = 0.0  # clip time at which the audio fed to the resampler ends
    for frame, frame_start, after_skip in _frames_with_times(container, stream, skipper):
        frame_end = frame_start + frame.samples / frame.sample_rate
        if frame_end <= window.start:
            continue  # the seek landed early; this frame is before the window
        if frame_start >= window.end:
            break
        if pcm_start is None:
            pcm_start = frame_start
        elif after_skip and frame_start > fed_until:
            # Skipped packets left a hole: silence keeps the audio after it in place.
            chunks.extend(resampler.silence(frame, frame_start - fed_until))
        chunks.extend(resampler.resample(frame))
        fed_until = frame_end
    chunks.extend(resampler.flush())
    if pcm_start is None:
        # Nothing decoded in the window: the stream ends before it despite what the
        # container claimed, i.e. the file is truncated.
        raise MediaError(ErrorCode.CORRUPT_MEDIA, "no audio could be decoded in the window")
    pcm = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    return pcm, pcm_start


class _MonoResampler:
    """FFmpeg's resampler to mono float32 at `rate`, rebuilt should the input change.

    A damaged stream can switch layout or rate mid-way (an AC-3 header bit flipped); FFmpeg's
    tools reconfigure their filters then, and so do we.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._resampler: av.AudioResampler | None = None
        self._input: tuple[str, str, int, int] | None = None

    def resample(self, frame: AudioFrame) -> list[np.ndarray]:
        kind = (frame.format.name, frame.layout.name, frame.layout.nb_channels, frame.sample_rate)
        out = []
        if kind != self._input:
            out = self.flush()
            self._resampler = av.AudioResampler(
                format="flt", layout="mono", rate=self.rate, options=_DOWNMIX_OPTIONS
            )
            self._input = kind
        assert self._resampler is not None
        out.extend(chunk.to_ndarray()[0] for chunk in self._resampler.resample(frame))
        return out

    def silence(self, like: AudioFrame, seconds: float) -> list[np.ndarray]:
        """`seconds` of silence in the format of frame `like`, through the same resampler."""
        count = round(seconds * like.sample_rate)
        if count <= 0:
            return []
        channels = like.layout.nb_channels
        shape = (channels, count) if like.format.is_planar else (1, count * channels)
        dtype = _SAMPLE_DTYPES[like.format.name.removesuffix("p")]
        zero = 128 if dtype is np.uint8 else 0  # unsigned 8-bit PCM is centred on 128
        silent = AudioFrame.from_ndarray(np.full(shape, zero, dtype), format=like.format, layout=like.layout)
        silent.sample_rate = like.sample_rate
        return self.resample(silent)

    def flush(self) -> list[np.ndarray]:
        """What the resampler still holds; the next frame starts a fresh one."""
        if self._resampler is None:
            return []
        out = [chunk.to_ndarray()[0] for chunk in self._resampler.resample(None)]
        self._resampler = self._input = None
        return out


def _frames_with_times(
    container: InputContainer, stream: Stream, skipper: PacketSkipper
) -> Iterator[tuple[AudioFrame, float, bool]]:
    """Decoded frames with their clip start time, and whether packets were skipped just before.

    A missing pts continues the previous frame.
    """
    origin = clip_origin(container)
    next_start: float | None = None
    skipped = skipper.packets
    for packet in container.demux(stream):
        for frame in skipper.decode(packet):
            if frame.time is not None:
                start = frame.time - origin
            else:
                start = next_start if next_start is not None else 0.0
            next_start = start + frame.samples / frame.sample_rate
            yield frame, start, skipper.packets != skipped
            skipped = skipper.packets
