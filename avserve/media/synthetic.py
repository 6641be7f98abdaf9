"""Write small synthetic clips with PyAV, for tests and benchmarks.

Video frames carry their own index as a barcode (`index_pattern`), audio is a tone with
an optional silent lead-in, so decoded output can be checked against what was written.
No external ffmpeg is needed: PyAV's wheels bundle the encoders.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

INDEX_BITS = 8  # frames 0..255 can be told apart


@dataclass(frozen=True)
class VideoTrack:
    codec: str = "libx264"
    width: int = 64
    height: int = 64
    fps: int = 25
    num_frames: int = 25
    pix_fmt: str = "yuv420p"
    # Frames between keyframes; None leaves the encoder default. A value >= num_frames
    # gives a single-keyframe ("long-GOP") stream.
    gop: int | None = None
    # Presentation times in seconds, one per frame, for variable frame rate; None = CFR.
    frame_times: Sequence[float] | None = None
    # Display rotation stored in the container, counter-clockwise degrees.
    rotation: int = 0
    options: dict[str, str] = field(default_factory=dict)
    # "index": the barcode of the frame index; "footage": a panning picture with sensor
    # grain, which costs a decoder about what camera footage does (for benchmarks).
    content: str = "index"


@dataclass(frozen=True)
class AudioTrack:
    codec: str = "aac"
    sample_rate: int = 48000
    layout: str = "stereo"
    seconds: float = 1.0
    tone_hz: float = 440.0
    amplitude: float = 0.5
    onset: float = 0.0  # silence before the tone starts, in seconds
    # The pitch rises by this much at every whole second, so a decoded window's pitch
    # tells which second of the clip it came from.
    step_hz: float = 0.0
    options: dict[str, str] = field(default_factory=dict)


def index_pattern(index: int, height: int, width: int) -> np.ndarray:
    """An RGB picture of horizontal bands: band b is white iff bit b of `index` is set.

    Big flat bands survive lossy compression, scaling and a centre crop of the width.
    """
    rgb = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, height, INDEX_BITS + 1).round().astype(int)
    for bit in range(INDEX_BITS):
        if index >> bit & 1:
            rgb[edges[bit] : edges[bit + 1]] = 255
    return rgb


def read_index_pattern(rgb: np.ndarray) -> int:
    """Inverse of `index_pattern`: read the index from the middle of each band."""
    height = rgb.shape[0]
    edges = np.linspace(0, height, INDEX_BITS + 1)
    index = 0
    for bit in range(INDEX_BITS):
        middle = int((edges[bit] + edges[bit + 1]) / 2)
        if rgb[middle].mean() > 127:
            index |= 1 << bit
    return index


def write_clip(
    path: str | os.PathLike[str],
    *,
    video: VideoTrack | None = None,
    audio: AudioTrack | None = None,
    container_format: str | None = None,
    on_frame: Callable[[], None] | None = None,
) -> Path:
    """Write a clip with the given tracks; the container follows the file extension.
    `on_frame` is called after each video frame is encoded (a progress bar's update)."""
    path = Path(path)
    with av.open(str(path), mode="w", format=container_format) as container:
        video_stream = _add_video_stream(container, video) if video else None
        audio_stream = _add_audio_stream(container, audio) if audio else None
        if video and video_stream:
            _encode_video(container, video_stream, video, on_frame)
        if audio and audio_stream:
            _encode_audio(container, audio_stream, audio)
    return path


def _add_video_stream(container: av.container.OutputContainer, track: VideoTrack):
    if track.frame_times is not None:
        # Millisecond timestamps let frames sit at arbitrary times (VFR).
        stream = container.add_stream(track.codec, rate=track.fps)
        stream.codec_context.time_base = Fraction(1, 1000)
    else:
        stream = container.add_stream(track.codec, rate=track.fps)
    stream.width = track.width
    stream.height = track.height
    stream.pix_fmt = track.pix_fmt
    options = dict(track.options)
    if track.gop is not None:
        stream.codec_context.gop_size = track.gop
        if track.codec == "libx264":
            # Without this x264 inserts keyframes at scene cuts, e.g. between barcodes.
            options.setdefault("x264-params", f"keyint={track.gop}:min-keyint={track.gop}:scenecut=0")
    stream.options = options
    if track.rotation:
        stream.set_display_rotation(track.rotation)
    return stream


FOOTAGE_PAN = 3  # pixels per frame


def footage_frame(index: int, height: int, width: int, grain: np.ndarray) -> np.ndarray:
    """Smooth colour waves panning 3 px per frame, plus grain (footage_grain) that changes every frame."""
    return _footage_panorama(height, width, FOOTAGE_PAN * index) + grain


def footage_grain(count: int, height: int, width: int) -> np.ndarray:
    """`count` fields of sensor grain to add to footage frames, as uint8 that wrap around: the
    waves stay within 58..198 and the grain within +-40, so a plain uint8 sum never overflows
    (at 1080p a float sum and clip would cost more than x264's encoding)."""
    grain = np.random.default_rng(0).normal(0, 6, (count, height, width, 1)).round().clip(-40, 40)
    # The same grain on all three channels, repeated rather than broadcast: numpy's broadcast
    # add is an order of magnitude slower.
    return np.repeat(grain.astype(np.int8).view(np.uint8), 3, axis=-1)


def _footage_panorama(height: int, width: int, first_x: int = 0) -> np.ndarray:
    """The waves (no grain) over columns [first_x, first_x + width): frame i is columns 3i.. of it."""
    y, x = np.mgrid[0:height, first_x : first_x + width].astype(np.float32)
    waves = [np.sin(x / 23 + y / 41), np.sin(x / 57 - y / 19 + 1), np.sin((x + y) / 31 + 2)]
    return (np.stack(waves, axis=-1) * 70 + 128).round().astype(np.uint8)


def _footage_frames(track: VideoTrack, grains: np.ndarray):
    """footage_frame(i) for every frame, the waves computed once per run of frames (they only pan)."""
    run = 64
    for first in range(0, track.num_frames, run):
        count = min(run, track.num_frames - first)
        panorama = _footage_panorama(track.height, track.width + FOOTAGE_PAN * (count - 1), FOOTAGE_PAN * first)
        for index in range(first, first + count):
            offset = FOOTAGE_PAN * (index - first)
            yield panorama[:, offset : offset + track.width] + grains[index % len(grains)]


def _encode_video(container, stream, track: VideoTrack, on_frame=None) -> None:
    # A few grain fields, cycled: fresh noise for every frame would dominate the time.
    grains = footage_grain(7, track.height, track.width)
    footage = _footage_frames(track, grains) if track.content == "footage" else None
    for index in range(track.num_frames):
        if footage is not None:
            rgb = next(footage)
        else:
            rgb = index_pattern(index, track.height, track.width)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if track.frame_times is not None:
            frame.pts = round(track.frame_times[index] * 1000)
            frame.time_base = Fraction(1, 1000)
        else:
            frame.pts = index
            frame.time_base = Fraction(1, track.fps)
        container.mux(stream.encode(frame))
        if on_frame is not None:
            on_frame()
    container.mux(stream.encode(None))


def _add_audio_stream(container: av.container.OutputContainer, track: AudioTrack):
    stream = container.add_stream(track.codec, rate=track.sample_rate, layout=track.layout)
    options = dict(track.options)
    if track.codec == "vorbis":
        options.setdefault("strict", "experimental")  # FFmpeg's own vorbis encoder
    stream.options = options
    return stream


def tone(track: AudioTrack) -> np.ndarray:
    """The mono signal `track` describes, float32 at its sample rate."""
    total = round(track.seconds * track.sample_rate)
    t = np.arange(total) / track.sample_rate
    frequency = track.tone_hz + track.step_hz * np.floor(t)
    signal = track.amplitude * np.sin(2 * np.pi * frequency * t)
    signal[t < track.onset] = 0.0
    return signal.astype(np.float32)


def _encode_audio(container, stream, track: AudioTrack) -> None:
    signal = tone(track)
    channels = av.AudioLayout(track.layout).nb_channels
    # Hand the encoder frames in its own sample format and frame size.
    resampler = av.AudioResampler(
        format=stream.codec_context.format,
        layout=track.layout,
        rate=track.sample_rate,
        frame_size=stream.codec_context.frame_size or None,
    )
    chunk = 1024
    for begin in range(0, len(signal), chunk):
        block = np.tile(signal[begin : begin + chunk], (channels, 1))
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=track.layout)
        frame.sample_rate = track.sample_rate
        frame.pts = begin
        frame.time_base = Fraction(1, track.sample_rate)
        for resampled in resampler.resample(frame):
            container.mux(stream.encode(resampled))
    for resampled in resampler.resample(None):
        container.mux(stream.encode(resampled))
    container.mux(stream.encode(None))


# --- Upload-size clips --------------------------------------------------------------------


@dataclass(frozen=True)
class UploadClip:
    """A clip the size of what users upload: 16:9 H.264 (High, CABAC) + AAC stereo in mp4, footage
    content, 30 fps, a keyframe exactly every `gop_seconds` (a phone records with a 1-2 s GOP)."""

    height: int
    seconds: float
    gop_seconds: float
    fps: int = 30
    # x264's veryfast keeps CABAC and B-frames (what phones write, so decoding costs what theirs
    # does) at ~4-5 Mbit/s for 1080p footage; it encodes 1080p at several frames a second on 2 cores.
    preset: str = "veryfast"

    SPEC = re.compile(r"(?P<height>\d+)p:(?P<seconds>[\d.]+):(?P<gop>[\d.]+)")

    @classmethod
    def parse(cls, spec: str) -> UploadClip:
        """"HEIGHTp:SECONDS:GOP_SECONDS", e.g. "1080p:30:2"."""
        match = cls.SPEC.fullmatch(spec.strip())
        if match is None:
            raise ValueError(f"upload clip {spec!r}: expected HEIGHTp:SECONDS:GOP_SECONDS, e.g. 1080p:30:2")
        clip = cls(int(match["height"]), float(match["seconds"]), float(match["gop"]))
        if clip.height < 16 or clip.height % 2 or not 0 < clip.seconds <= 600 or not 0 < clip.gop_seconds <= clip.seconds:
            raise ValueError(f"upload clip {spec!r}: the height must be even and >= 16, 0 < GOP <= seconds <= 600")
        return clip

    @property
    def width(self) -> int:
        return round(self.height * 16 / 9 / 2) * 2  # H.264 4:2:0 needs even sizes

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def gop_frames(self) -> int:
        return max(1, round(self.gop_seconds * self.fps))

    @property
    def name(self) -> str:
        return f"upload_{self.height}p_{self.seconds:g}s_gop{self.gop_seconds:g}s"

    def tracks(self) -> tuple[VideoTrack, AudioTrack]:
        video = VideoTrack(width=self.width, height=self.height, fps=self.fps, num_frames=self.num_frames,
                           gop=self.gop_frames, content="footage", options={"preset": self.preset})
        audio = AudioTrack(sample_rate=48000, layout="stereo", seconds=self.seconds, tone_hz=330.0, step_hz=20.0)
        return video, audio


# 720p and 1080p, 10-30 s, short (0.5 s) and long (2 s, 5 s) GOP. Encoding them once takes about
# 5-8 min on 2 busy cores (1080p: ~4 frames/s), so the set stays small.
UPLOAD_SET: tuple[UploadClip, ...] = (
    UploadClip(720, 10, 0.5),
    UploadClip(720, 20, 5),
    UploadClip(1080, 10, 2),
    UploadClip(1080, 30, 2),  # a phone's 30 s clip
)
UPLOAD_MANIFEST = "uploads.json"


def write_upload_clips(directory: str | os.PathLike[str], clips: Sequence[UploadClip] = UPLOAD_SET, *,
                       progress: bool = True) -> list[dict]:
    """Write `clips` into `directory` as <name>.mp4 (a file already there is kept: encoding 1080p
    takes minutes) and list them in its uploads.json; return their manifest entries."""
    from tqdm import tqdm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    missing = [clip for clip in clips if not (directory / f"{clip.name}.mp4").is_file()]
    with tqdm(total=sum(c.num_frames for c in missing), desc="upload clips", unit="frame", disable=not progress) as bar:
        for clip in missing:
            bar.set_postfix_str(clip.name)
            video, audio = clip.tracks()
            path = directory / f"{clip.name}.mp4"
            partial = path.with_suffix(".part.mp4")
            write_clip(partial, video=video, audio=audio, on_frame=lambda: bar.update(1))
            partial.replace(path)
    manifest = directory / UPLOAD_MANIFEST
    # Clips an earlier call wrote stay listed while their files are there.
    earlier = json.loads(manifest.read_text())["clips"] if manifest.is_file() else []
    names = {clip.name for clip in clips}
    kept = [entry for entry in earlier if entry["name"] not in names and (directory / entry["path"]).is_file()]
    entries = [{"name": clip.name, "path": f"{clip.name}.mp4", "width": clip.width, "height": clip.height,
                "fps": clip.fps, "seconds": clip.seconds, "gop_seconds": clip.gop_seconds, "video": "h264",
                "audio": "aac", "x264_preset": clip.preset, "bytes": (directory / f"{clip.name}.mp4").stat().st_size}
               for clip in clips]
    manifest.write_text(json.dumps({"clips": kept + entries}, indent=2) + "\n")
    return entries


# --- Damaged copies ---------------------------------------------------------------------


def damage_packets(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    stream: str,
    packets: Sequence[int],
    mode: str = "overwrite",
    seed: int = 0,
) -> Path:
    """Copy `source` with the payload of some packets of its `stream` ("audio"/"video") damaged.

    `packets` index that stream's packets in file order (negative: from the end).
    "overwrite": the payload bytes are overwritten in place with random ones; the container,
    its index and every timestamp stay intact (a disk or transfer error).
    "truncate": the file is remuxed with only the first third of those payloads (an
    incomplete packet, e.g. a capture that dropped bytes).
    """
    source, destination = Path(source), Path(destination)
    with av.open(str(source)) as container:
        spans = [(p.pos, p.size) for p in container.demux() if p.size and p.stream.type == stream]
    chosen = sorted({range(len(spans))[i] for i in packets})  # IndexError if out of range
    if mode == "overwrite":
        data = bytearray(source.read_bytes())
        rng = np.random.default_rng(seed)
        for position, size in (spans[i] for i in chosen):
            if position is None or position < 0:
                raise ValueError(f"{source.name}: the demuxer gives no position for its {stream} packets")
            data[position : position + size] = rng.bytes(size)
        destination.write_bytes(bytes(data))
    elif mode == "truncate":
        _remux_truncated(source, destination, stream, set(chosen))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return destination


def _remux_truncated(source: Path, destination: Path, kind: str, chosen: set[int]) -> None:
    """Remux `source` (container from the destination's extension), cutting the chosen packets."""
    with av.open(str(source)) as input_, av.open(str(destination), mode="w") as output:
        streams = {s.index: output.add_stream_from_template(s) for s in input_.streams}
        ordinal = 0
        for packet in input_.demux():
            if not packet.size:
                continue  # the demuxer's end-of-stream packets
            index = packet.stream.index
            if packet.stream.type == kind:
                if ordinal in chosen:
                    cut = av.Packet(bytes(packet)[: packet.size // 3])
                    cut.pts, cut.dts, cut.time_base = packet.pts, packet.dts, packet.time_base
                    cut.is_keyframe = packet.is_keyframe
                    packet = cut
                ordinal += 1
            packet.stream = streams[index]
            output.mux(packet)
