"""One upload, one worker call: probe the file, then decode what its route needs.

A classify request used to make three worker calls (probe, audio, video), each opening the
file and paying for its headers and index again. Now the probe and the video decode share one
open container (H.264 & co. decode bit-exactly after a seek); audio gets a fresh one per window,
because FFmpeg's AAC decoder keeps state across a flush and its output after the probe would
differ (by up to 1e-3, measured) from what training decoded. The gateway picks
the model from the streams that actually decode, so it cannot say what to decode before the
probe; instead it sends the decode it would want for each set of streams the file may turn
out to have, and the worker picks after probing:

    plans = {frozenset({"audio", "video"}): DecodePlan(AudioInput(16000), VideoInput(8, 224, 224), windows),
             frozenset({"audio"}): DecodePlan(AudioInput(16000), None, windows), ...}
    read = read_media(path, plans, limits)     # read.info, read.windows, read.audio[i], read.video[i]

A set with no plan (no model serves it, or the request forbids it) is probed only; the caller
then reports why. Likewise when the requested window does not fit the clip (`read.windows` is
None): the caller plans the windows itself and raises its own error.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ._container import open_media
from .audio import DecodedAudio, decode_audio_from
from .errors import ErrorCode, MediaError
from .limits import DEFAULT_LIMITS, MediaLimits
from .probe import MediaInfo, probe_container
from .video import DecodedVideo, Sampling, decode_video_from

# A window shorter than this would round to no audio sample / no frame period at all.
MIN_WINDOW_SECONDS = 1e-3


@dataclass(frozen=True)
class AudioInput:
    sample_rate: int


@dataclass(frozen=True)
class VideoInput:
    num_frames: int
    height: int
    width: int
    sampling: Sampling = "exact"


@dataclass(frozen=True)
class ClipWindow:
    start: float
    duration: float | None  # None: to the end of the clip (models without a fixed length)


@dataclass(frozen=True)
class WindowPlan:
    """How a request's span is cut into model-length windows."""

    length: float | None  # the model's clip length in seconds; None: it takes any length
    start: float = 0.0
    duration: float | None = None  # None: one model-length window
    max_windows: int = 8

    def windows(self, media_duration: float | None) -> list[ClipWindow]:
        """Cover `[start, start + duration)` with windows of the model's clip length.

        Without `duration` one model-length window is scored. A span longer than the model's
        clip is split into consecutive windows (the caller averages their scores); the span is
        first cut at the end of the clip, so asking for "60 s" of a 5 s file scores the 5 s
        there are. Raises MediaError(INVALID_WINDOW).
        """
        start, duration = self.start, self.duration
        if media_duration is not None and start >= media_duration:
            raise MediaError(
                ErrorCode.INVALID_WINDOW, f"start {start} s is past the end of the clip ({media_duration:.3f} s)"
            )
        if self.length is None:
            return [ClipWindow(start, duration)]
        span = self.length if duration is None else duration
        if duration is not None and media_duration is not None:
            span = min(span, media_duration - start)
        count = max(1, math.ceil(span / self.length - 1e-9))
        if count > self.max_windows:
            raise MediaError(
                ErrorCode.INVALID_WINDOW,
                f"duration {duration} s needs {count} windows of {self.length} s, more than the limit of {self.max_windows}",
            )
        return [
            ClipWindow(start + i * self.length, max(MIN_WINDOW_SECONDS, min(self.length, span - i * self.length)))
            for i in range(count)
        ]


@dataclass(frozen=True)
class DecodePlan:
    audio: AudioInput | None
    video: VideoInput | None
    windows: WindowPlan


@dataclass(frozen=True)
class MediaRead:
    info: MediaInfo
    present: frozenset[str]  # "audio" / "video": the streams that decode
    windows: list[ClipWindow] | None  # None: no plan for `present`, or the window did not fit
    audio: list[DecodedAudio]  # one per window when the plan asked for audio, else empty
    video: list[DecodedVideo]
    probe_seconds: float
    decode_seconds: float


def read_media(
    path: str | os.PathLike[str], plans: Mapping[frozenset[str], DecodePlan], limits: MediaLimits = DEFAULT_LIMITS
) -> MediaRead:
    """Probe `path` and decode, through the same open container, what `plans` asks for the
    streams found. Raises MediaError as `probe`, `decode_audio` and `decode_video` do."""
    path = Path(path)
    began = time.perf_counter()
    with ExitStack() as stack:
        container = stack.enter_context(open_media(path, limits))
        info = probe_container(container, path, limits)
        probed = time.perf_counter()
        present = frozenset(kind for kind, has in (("audio", info.has_audio), ("video", info.has_video)) if has)
        plan = plans.get(present)
        windows = None
        if plan is not None:
            try:
                windows = plan.windows.windows(info.duration)
            except MediaError as error:
                if error.code is not ErrorCode.INVALID_WINDOW:
                    raise
        audio: list[DecodedAudio] = []
        video: list[DecodedVideo] = []
        if plan is not None and windows is not None:
            if plan.audio is not None:
                for window in windows:  # a fresh decoder per window, for the same reason
                    with open_media(path, limits) as audio_container:
                        audio.append(decode_audio_from(
                            audio_container, sample_rate=plan.audio.sample_rate, start=window.start,
                            duration=window.duration, limits=limits,
                        ))  # fmt: skip
            if plan.video is not None:
                for window in windows:
                    video.append(decode_video_from(
                        container, num_frames=plan.video.num_frames, size=(plan.video.height, plan.video.width),
                        start=window.start, duration=window.duration, limits=limits, sampling=plan.video.sampling,
                    ))  # fmt: skip
    return MediaRead(info, present, windows, audio, video, probed - began, time.perf_counter() - probed)

