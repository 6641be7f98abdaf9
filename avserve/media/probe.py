"""What is in a media file: which streams we can actually decode, and their shape."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from av.audio.frame import AudioFrame
from av.container import InputContainer
from av.stream import Stream
from av.video.frame import VideoFrame

from ._container import (
    check_frame_pixels,
    container_duration,
    open_media,
    select_stream,
    stream_duration,
)
from ._packets import PacketSkipper
from .errors import ErrorCode, MediaError
from .limits import DEFAULT_LIMITS, MediaLimits
from .rotation import frame_rotation

# How many packets probe() may read looking for the first frame of each stream. Decoders
# with frame threading or B-frame reordering hold back a few packets; 500 is far more than
# any sane file needs and still bounds the work a hostile file can cause.
_FIRST_FRAME_PACKET_BUDGET = 500


@dataclass(frozen=True)
class AudioStreamInfo:
    codec: str
    sample_rate: int
    channels: int
    layout: str
    duration: float | None
    # Packets before the first frame that failed to decode and were skipped (and their size).
    skipped_packets: int = 0
    skipped_bytes: int = 0


@dataclass(frozen=True)
class VideoStreamInfo:
    codec: str
    width: int  # as stored; see display_width/display_height for the upright picture
    height: int
    fps: float | None  # average frame rate
    rotation: int  # degrees counter-clockwise that turn a stored frame upright: 0/90/180/270
    frame_count: int | None
    duration: float | None
    skipped_packets: int = 0  # as AudioStreamInfo's
    skipped_bytes: int = 0

    @property
    def display_width(self) -> int:
        return self.height if self.rotation in (90, 270) else self.width

    @property
    def display_height(self) -> int:
        return self.width if self.rotation in (90, 270) else self.height


@dataclass(frozen=True)
class MediaInfo:
    path: str
    container: str
    size_bytes: int
    duration: float | None
    audio: AudioStreamInfo | None
    video: VideoStreamInfo | None

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    @property
    def has_video(self) -> bool:
        return self.video is not None

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["has_audio"] = self.has_audio
        result["has_video"] = self.has_video
        return result


def probe(path: str | os.PathLike[str], limits: MediaLimits = DEFAULT_LIMITS) -> MediaInfo:
    """Describe the decodable audio and video streams of `path`.

    A stream counts only if a frame actually decodes: a known codec with broken data is as
    useless to us as an unknown one. Packets that fail to decode before that first frame are
    skipped, as FFmpeg does, up to `limits.max_bad_packets` / `max_bad_packet_bytes`; a
    stream with more is left out. Raises MediaError (NO_DECODABLE_STREAM if neither an audio
    nor a video stream decodes, or a limit/format code).
    """
    path = Path(path)
    with open_media(path, limits) as container:
        return probe_container(container, path, limits)


def probe_container(container: InputContainer, path: Path, limits: MediaLimits = DEFAULT_LIMITS) -> MediaInfo:
    """`probe` on a container opened with `open_media` (it reads packets from the current position)."""
    audio_stream = select_stream(container, "audio")
    video_stream = select_stream(container, "video")
    skippers = {
        stream.index: PacketSkipper(kind, limits, strict=False)
        for kind, stream in (("audio", audio_stream), ("video", video_stream))
        if stream is not None
    }
    first_frames = _first_frames(container, [s for s in (audio_stream, video_stream) if s], skippers)

    audio = video = None
    if audio_stream is not None and audio_stream.index in first_frames:
        frame = first_frames[audio_stream.index]
        assert isinstance(frame, AudioFrame)
        audio = _audio_info(audio_stream, container, frame, skippers[audio_stream.index])
    if video_stream is not None and video_stream.index in first_frames:
        frame = first_frames[video_stream.index]
        assert isinstance(frame, VideoFrame)
        check_frame_pixels(frame.width, frame.height, limits)
        video = _video_info(video_stream, container, frame, skippers[video_stream.index])
    if audio is None and video is None:
        raise MediaError(
            ErrorCode.NO_DECODABLE_STREAM, "the file has no audio or video stream we can decode"
        )
    return MediaInfo(
        path=str(path),
        container=container.format.name,
        size_bytes=path.stat().st_size,
        duration=container_duration(container),
        audio=audio,
        video=video,
    )


def _first_frames(
    container: InputContainer, streams: list[Stream], skippers: dict[int, PacketSkipper]
) -> dict[int, AudioFrame | VideoFrame]:
    """Decode until each stream has given one frame; a stream past its bad-packet limit is left out."""
    frames: dict[int, AudioFrame | VideoFrame] = {}
    failed: set[int] = set()
    if not streams:
        return frames
    for count, packet in enumerate(container.demux(*streams)):
        index = packet.stream.index
        if index not in frames and index not in failed:
            decoded = skippers[index].decode(packet)
            if decoded:
                frames[index] = decoded[0]
            elif skippers[index].exceeded:
                failed.add(index)
        if len(frames) + len(failed) == len(streams) or count >= _FIRST_FRAME_PACKET_BUDGET:
            break
    return frames


def _audio_info(
    stream: Stream, container: InputContainer, first: AudioFrame, skipped: PacketSkipper
) -> AudioStreamInfo:
    context = stream.codec_context
    # The header's parameters, else the first frame's (a header FFmpeg could not fill in
    # because the packets it looked at were damaged).
    layout = context.layout if context.layout.nb_channels else first.layout
    return AudioStreamInfo(
        codec=context.name,
        sample_rate=int(context.sample_rate or first.sample_rate),
        channels=int(layout.nb_channels),
        layout=layout.name,
        duration=stream_duration(stream) or container_duration(container),
        skipped_packets=skipped.packets,
        skipped_bytes=skipped.bytes,
    )


def _video_info(
    stream: Stream, container: InputContainer, first: VideoFrame, skipped: PacketSkipper
) -> VideoStreamInfo:
    context = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate
    return VideoStreamInfo(
        codec=context.name,
        width=int(first.width),
        height=int(first.height),
        fps=float(rate) if rate else None,
        rotation=frame_rotation(first, stream),
        frame_count=stream.frames if stream.frames > 0 else None,
        duration=stream_duration(stream) or container_duration(container),
        skipped_packets=skipped.packets,
        skipped_bytes=skipped.bytes,
    )
