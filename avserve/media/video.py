"""Sampling N frames uniformly over a window, resized and centre-cropped to RGB arrays.

Two ways to pick the frame for each target time (`sampling`):
  exact  the frame on screen at the target: decode forward from the keyframe before it.
  fast   the keyframe nearest the target, when one lies within a segment's length of it,
         decoded alone; else the last reference frame at or before the target (the decoder
         skips non-reference frames, FFmpeg's `skip_frame`). A phone clip with a 2 s GOP costs
         a handful of intra frames instead of whole GOPs.
         `DecodedVideo.targets` next to `.timestamps` says how far each choice landed.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from av.container import InputContainer
from av.packet import Packet
from av.stream import Stream
from av.video.frame import VideoFrame

from ._container import (
    check_frame_pixels,
    clip_origin,
    open_media,
    seek_to,
    select_stream,
    stream_end,
)
from ._packets import PACKET_ERRORS, PacketSkipper
from ._window import Window, resolve_window
from .errors import ErrorCode, MediaError
from .limits import DEFAULT_LIMITS, MediaLimits
from .rotation import frame_rotation, rotate_upright

# A frame whose timestamp is within this of a target counts as shown at the target;
# absorbs float rounding of pts * time_base (a microsecond is far below any frame period).
_TIME_EPSILON = 1e-6

Sampling = Literal["exact", "fast"]
SAMPLING_MODES: tuple[Sampling, ...] = ("exact", "fast")


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray  # uint8 [N, H, W, 3], RGB, upright
    timestamps: np.ndarray  # float64 [N], clip time (s) at which each returned frame is shown
    source_size: tuple[int, int]  # (height, width) of the upright source picture
    rotation: int  # degrees counter-clockwise applied to make the frames upright
    # Packets that failed to decode and were skipped (FFmpeg's behaviour, bounded by
    # MediaLimits.max_bad_packets / max_bad_packet_bytes): the frame before stays on screen.
    skipped_packets: int = 0
    skipped_bytes: int = 0
    sampling: Sampling = "exact"
    # float64 [N]: the clip times the frames were sampled for (segment centres); with `fast`
    # sampling `timestamps - targets` is how far each chosen keyframe landed from its target.
    targets: np.ndarray | None = None

    @property
    def max_offset(self) -> float:
        """Largest distance (s) between a target and the time its frame was shown from.

        With `exact` sampling it is under a frame period (the frame on screen at the target
        was shown a little before it)."""
        if self.targets is None or not len(self.targets):
            return 0.0
        return float(np.max(np.abs(self.timestamps - self.targets)))


def decode_video(
    path: str | os.PathLike[str],
    *,
    num_frames: int,
    size: int | tuple[int, int],
    start: float = 0.0,
    duration: float | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
    sampling: Sampling = "exact",
) -> DecodedVideo:
    """Sample `num_frames` frames uniformly over `[start, start + duration)`.

    The window is clipped to the video stream and split into `num_frames` equal segments;
    from each we take the frame on screen at the segment's centre (by presentation time,
    so variable frame rate is handled). Frames are turned upright, resized so they cover
    `size` -- an int for a square, or (height, width) -- and centre-cropped.
    With `duration=None` the window runs to the end, at most `limits.max_decode_seconds`.
    Packets that fail to decode are skipped and counted, up to the limits (then
    TOO_MANY_BAD_PACKETS). `sampling` is "exact" or "fast" (see the module docstring).
    """
    _check_arguments(num_frames, size, sampling)  # before opening: a caller's error is not the file's
    with open_media(path, limits) as container:
        return decode_video_from(
            container, num_frames=num_frames, size=size, start=start, duration=duration, limits=limits,
            sampling=sampling,
        )  # fmt: skip


def decode_video_from(
    container: InputContainer,
    *,
    num_frames: int,
    size: int | tuple[int, int],
    start: float = 0.0,
    duration: float | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
    sampling: Sampling = "exact",
) -> DecodedVideo:
    """`decode_video` on a container opened with `open_media` (it may have been read already:
    every target is reached by seeking)."""
    out_height, out_width = _check_arguments(num_frames, size, sampling)

    stream = select_stream(container, "video")
    if stream is None:
        raise MediaError(ErrorCode.NO_VIDEO_STREAM, "the file has no decodable video stream")
    clip_end = stream_end(container, stream)
    window = resolve_window(start, duration, clip_end, limits)
    if clip_end is not None:
        window = Window(window.start, min(window.end, clip_end), window.padded)
    targets = segment_centres(window, num_frames)
    skipper = PacketSkipper("video", limits)
    index = _KeyframeIndex.of(container, stream)
    if sampling == "fast":
        # A keyframe further than one segment from its target would stand for the wrong
        # part of the window: that target gets the reference frame before it instead.
        shown = _keyframes_near(container, stream, index, targets, window.duration / num_frames, limits, skipper)
    else:
        shown = _frames_shown_at(container, stream, index, targets, limits, skipper)
    rotation = frame_rotation(shown[0][0], stream)
    frames = _to_rgb_batch([frame for frame, _ in shown], rotation, out_height, out_width)

    first = shown[0][0]
    upright = (first.width, first.height) if rotation in (90, 270) else (first.height, first.width)
    return DecodedVideo(
        frames=frames,
        timestamps=np.array([time for _, time in shown], dtype=np.float64),
        source_size=upright,
        rotation=rotation,
        skipped_packets=skipper.packets,
        skipped_bytes=skipper.bytes,
        sampling=sampling,
        targets=np.array(targets, dtype=np.float64),
    )


def _check_arguments(num_frames: int, size: int | tuple[int, int], sampling: str) -> tuple[int, int]:
    """The output (height, width); ValueError for arguments no file could satisfy."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    out_height, out_width = (size, size) if isinstance(size, int) else size
    if out_height < 1 or out_width < 1:
        raise ValueError(f"size must be positive, got {size}")
    return out_height, out_width


def segment_centres(window: Window, count: int) -> list[float]:
    """Centres of `count` equal segments of the window, in increasing order."""
    step = window.duration / count
    return [window.start + (i + 0.5) * step for i in range(count)]


# --- Finding the frame on screen at each target time -----------------------------------


def _frames_shown_at(
    container: InputContainer,
    stream: Stream,
    index: _KeyframeIndex,
    targets: list[float],
    limits: MediaLimits,
    skipper: PacketSkipper,
) -> list[tuple[VideoFrame, float]]:
    """For each target (sorted), the frame on screen at that time and its clip time.

    Decoding only ever moves forward. We seek only when a keyframe lies between where we
    are and the target: the seek then skips work. Otherwise decoding on is cheaper than
    seeking back to a keyframe we have already passed; on a single-keyframe file this
    decodes the window once instead of once per target.
    """
    frames: Iterator[tuple[VideoFrame, float]] | None = None
    position = -math.inf  # clip time of the newest frame decoded since the last seek
    on_screen: tuple[VideoFrame, float] | None = None  # newest frame at or before the target
    ahead: tuple[VideoFrame, float] | None = None  # decoded, but after the current target
    shown: list[tuple[VideoFrame, float]] = []
    for target in targets:
        if frames is None or index.keyframe_between(position, target):
            frames = _seek_before(container, stream, target, index.decode_lag, limits, skipper)
            position, on_screen, ahead = -math.inf, None, None
        while True:
            if ahead is None:
                ahead = next(frames, None)
                if ahead is None:
                    break  # end of stream: the last frame stays on screen
                position = ahead[1]
            if ahead[1] <= target + _TIME_EPSILON:
                on_screen, ahead = ahead, None
            else:
                break
        # A target before the first frame gets the first frame.
        choice = on_screen or ahead or (shown[-1] if shown else None)
        if choice is None:
            raise MediaError(ErrorCode.CORRUPT_MEDIA, "no video frame could be decoded")
        shown.append(choice)
    return shown


def _keyframes_near(
    container: InputContainer,
    stream: Stream,
    index: _KeyframeIndex,
    targets: list[float],
    tolerance: float,
    limits: MediaLimits,
    skipper: PacketSkipper,
) -> list[tuple[VideoFrame, float]]:
    """For each target (sorted), the keyframe nearest it when one lies within `tolerance`,
    else the frame on screen at the target (as `_frames_shown_at`).

    Keyframes are chosen from the packets (demuxing is cheap) and only the chosen ones are
    decoded, each alone: decode, drain, flush. That avoids both the decoder's reordering
    delay (with B-frames it holds a keyframe back until later ones arrive) and seeks, which
    in mp4 land a keyframe early. A keyframe chosen for several targets decodes once.
    """
    origin = clip_origin(container)
    time_base = float(stream.time_base) if stream.time_base is not None else None
    chosen_packets: dict[int, tuple[Packet, float]] = {}
    if time_base is not None:
        seek_to(container, stream, max(0.0, targets[0] - tolerance - index.decode_lag))
        horizon = targets[-1] + tolerance + _TIME_EPSILON
        for packet in container.demux(stream):
            if packet.dts is not None and packet.dts * time_base - origin > horizon:
                break  # every later frame is shown later still (pts >= dts)
            if not packet.is_keyframe or packet.pts is None:
                continue
            time = packet.pts * time_base - origin
            if time > horizon:
                break  # keyframes come in presentation order: the rest are further still
            for i, target in enumerate(targets):
                distance = abs(time - target)
                if distance <= tolerance + _TIME_EPSILON and (
                    i not in chosen_packets or distance < abs(chosen_packets[i][1] - target)
                ):
                    chosen_packets[i] = (packet, time)

    chosen: dict[int, tuple[VideoFrame, float]] = {}
    decoded: dict[int, tuple[VideoFrame, float] | None] = {}  # by id(packet)
    for i, (packet, _) in sorted(chosen_packets.items()):
        if id(packet) not in decoded:
            decoded[id(packet)] = _decode_alone(stream, packet, origin, limits, skipper)
        if decoded[id(packet)] is not None:
            chosen[i] = decoded[id(packet)]  # type: ignore[assignment]
    missing = [i for i in range(len(targets)) if i not in chosen]
    if missing:
        # No keyframe close enough (or it did not decode): the nearest earlier frame that other
        # frames reference. Skipping the rest (FFmpeg's skip_frame=NONREF; they cannot affect the
        # frames after them) lands within a frame or two of the target for much less decoding.
        stream.codec_context.skip_frame = "NONREF"
        try:
            exact = _frames_shown_at(container, stream, index, [targets[i] for i in missing], limits, skipper)
        finally:
            stream.codec_context.skip_frame = "DEFAULT"
        chosen.update(zip(missing, exact, strict=True))
    return [chosen[i] for i in range(len(targets))]


def _decode_alone(
    stream: Stream, packet: Packet, origin: float, limits: MediaLimits, skipper: PacketSkipper
) -> tuple[VideoFrame, float] | None:
    """The frame of one keyframe packet, decoded on its own (the decoder is flushed after)."""
    context = stream.codec_context
    frames = skipper.decode(packet)
    try:
        frames += context.decode(None)  # drain: out now, not after the next packets
    except PACKET_ERRORS:
        pass
    context.flush_buffers()
    # Frames drained from the codec carry no time base: time them with the stream's.
    if not frames or frames[0].pts is None or stream.time_base is None:
        return None
    frame = frames[0]
    check_frame_pixels(frame.width, frame.height, limits)
    return frame, float(frame.pts * stream.time_base) - origin


@dataclass(frozen=True)
class _KeyframeIndex:
    """Presentation times of the keyframes listed in the container's index.

    mp4 indexes hold decode timestamps, which with B-frames run a constant lag ahead of
    presentation times (two frames for x264). The first entry's distance to the stream's
    first presentation time measures that lag. Matroska cues hold presentation times
    already, and their lag comes out as zero.
    """

    times: list[float]  # empty when the container has no index
    decode_lag: float  # seconds: index (decode) time = presentation time - decode_lag

    @classmethod
    def of(cls, container: InputContainer, stream: Stream) -> _KeyframeIndex:
        entries = list(stream.index_entries)
        if stream.time_base is None or not entries:
            return cls([], 0.0)
        time_base = float(stream.time_base)
        lag = 0.0
        if stream.start_time is not None:
            first_entry = min(entry.timestamp for entry in entries)
            lag = min(max(0.0, (stream.start_time - first_entry) * time_base), 1.0)
        origin = clip_origin(container)
        times = sorted(
            entry.timestamp * time_base + lag - origin for entry in entries if entry.is_keyframe
        )
        return cls(times, lag)

    def keyframe_between(self, position: float, target: float) -> bool:
        """Is there a keyframe after `position` and at or before `target`?

        Without an index we cannot tell and say no: after the first seek we decode
        forward, and the window length bounds that work.
        """
        following = bisect.bisect_right(self.times, position + _TIME_EPSILON)
        return following < len(self.times) and self.times[following] <= target + _TIME_EPSILON


def _seek_before(
    container: InputContainer,
    stream: Stream,
    target: float,
    decode_lag: float,
    limits: MediaLimits,
    skipper: PacketSkipper,
) -> Iterator[tuple[VideoFrame, float]]:
    """Decoded frames starting at the last keyframe displayed at or before `target`.

    Should the demuxer land on a keyframe displayed after the target (timestamps we
    misjudged), retry once from a second earlier.
    """
    seek_to(container, stream, max(0.0, target - decode_lag))
    frames = _decoded_frames(container, stream, limits, skipper)
    first = next(frames, None)
    if first is not None and first[1] > target + _TIME_EPSILON and target > 0:
        seek_to(container, stream, max(0.0, first[1] - decode_lag - 1.0))
        frames = _decoded_frames(container, stream, limits, skipper)
        first = next(frames, None)
    return itertools.chain([first] if first is not None else [], frames)


def _decoded_frames(
    container: InputContainer, stream: Stream, limits: MediaLimits, skipper: PacketSkipper
) -> Iterator[tuple[VideoFrame, float]]:
    """Frames from the current read position with their clip time (presentation order)."""
    origin = clip_origin(container)
    rate = stream.average_rate or stream.guessed_rate
    frame_period = 1.0 / float(rate) if rate else 0.0
    previous: float | None = None
    for packet in container.demux(stream):
        for frame in skipper.decode(packet):
            # The header was checked, but a stream may change resolution mid-way.
            check_frame_pixels(frame.width, frame.height, limits)
            if frame.time is not None:
                time = frame.time - origin
            else:
                time = previous + frame_period if previous is not None else 0.0
            previous = time
            yield frame, time


# --- Pixels ---------------------------------------------------------------------------


def _to_rgb_batch(
    frames: list[VideoFrame], rotation: int, out_height: int, out_width: int
) -> np.ndarray:
    batch = np.empty((len(frames), out_height, out_width, 3), dtype=np.uint8)
    converted: dict[int, np.ndarray] = {}  # a frame shown at several targets converts once
    for i, frame in enumerate(frames):
        key = id(frame)
        if key not in converted:
            converted[key] = _to_rgb(frame, rotation, out_height, out_width)
        batch[i] = converted[key]
    return batch


def _to_rgb(frame: VideoFrame, rotation: int, out_height: int, out_width: int) -> np.ndarray:
    """Scale so the upright picture covers (out_height, out_width), rotate, centre-crop."""
    sideways = rotation in (90, 270)
    upright_height, upright_width = (
        (frame.width, frame.height) if sideways else (frame.height, frame.width)
    )
    scale = max(out_height / upright_height, out_width / upright_width)
    scaled_height = max(out_height, round(upright_height * scale))
    scaled_width = max(out_width, round(upright_width * scale))
    # Scale before rotating so FFmpeg's swscale does the heavy lifting on the stored layout.
    stored_width, stored_height = (
        (scaled_height, scaled_width) if sideways else (scaled_width, scaled_height)
    )
    rgb = frame.to_ndarray(format="rgb24", width=stored_width, height=stored_height)
    rgb = rotate_upright(rgb, rotation)
    top = (rgb.shape[0] - out_height) // 2
    left = (rgb.shape[1] - out_width) // 2
    return rgb[top : top + out_height, left : left + out_width]
