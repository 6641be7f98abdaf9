"""Write small synthetic clips with PyAV, for tests and benchmarks.

Video frames carry their own index as a barcode (`index_pattern`), audio is a tone with
an optional silent lead-in, so decoded output can be checked against what was written.
No external ffmpeg is needed: PyAV's wheels bundle the encoders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
) -> Path:
    """Write a clip with the given tracks; the container follows the file extension."""
    path = Path(path)
    with av.open(str(path), mode="w", format=container_format) as container:
        video_stream = _add_video_stream(container, video) if video else None
        audio_stream = _add_audio_stream(container, audio) if audio else None
        if video and video_stream:
            _encode_video(container, video_stream, video)
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


def footage_frame(index: int, height: int, width: int, grain: np.ndarray) -> np.ndarray:
    """Smooth colour waves panning 3 px per frame, plus grain that changes every frame."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x += 3 * index
    waves = [np.sin(x / 23 + y / 41), np.sin(x / 57 - y / 19 + 1), np.sin((x + y) / 31 + 2)]
    picture = np.stack(waves, axis=-1) * 70 + 128
    return np.clip(picture + grain, 0, 255).astype(np.uint8)


def _encode_video(container, stream, track: VideoTrack) -> None:
    # A few grain fields, cycled: fresh noise for every frame would dominate the time.
    rng = np.random.default_rng(0)
    grains = rng.normal(0, 6, (7, track.height, track.width, 1)).astype(np.float32)
    for index in range(track.num_frames):
        if track.content == "footage":
            rgb = footage_frame(index, track.height, track.width, grains[index % len(grains)])
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
