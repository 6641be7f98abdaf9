"""Bad input always ends in a MediaError with the right code, quickly.

Nothing PyAV, FFmpeg or the OS raises may escape the package: the gateway maps
MediaError codes to HTTP answers and treats anything else as a server bug.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from avserve.media import (
    DEFAULT_LIMITS,
    ErrorCode,
    MediaError,
    MediaLimits,
    decode_audio,
    decode_video,
    probe,
)
from avserve.media.synthetic import AudioTrack, VideoTrack

pytestmark = pytest.mark.timeout(20)

AV_TRACKS = dict(video=VideoTrack(num_frames=50, gop=10), audio=AudioTrack("aac", 48000, "stereo", seconds=2.0))


def every_entry_point(path, limits=DEFAULT_LIMITS):
    return {
        "probe": lambda: probe(path, limits),
        "audio": lambda: decode_audio(path, sample_rate=16000, limits=limits),
        "video": lambda: decode_video(path, num_frames=8, size=32, limits=limits),
    }


def assert_all_fail_with(path, code, limits=DEFAULT_LIMITS):
    for name, call in every_entry_point(path, limits).items():
        with pytest.raises(MediaError) as caught:
            call()
        assert caught.value.code is code, f"{name}: {caught.value}"


def test_empty_file(clips):
    assert_all_fail_with(clips.write_bytes("empty.mp4", b""), ErrorCode.EMPTY_FILE)


def test_random_bytes(clips):
    data = np.random.default_rng(1).bytes(64 * 1024)
    assert_all_fail_with(clips.write_bytes("random.mp4", data), ErrorCode.UNSUPPORTED_MEDIA)


def test_text_file(clips):
    text = "name,label\nclip1.mp4,dog\n" * 200
    assert_all_fail_with(clips.write_bytes("labels.csv", text.encode()), ErrorCode.UNSUPPORTED_MEDIA)


@pytest.mark.parametrize("path_kind", ["missing", "directory"])
def test_unreadable_path(clips, path_kind):
    path = clips.directory / "missing.mp4" if path_kind == "missing" else clips.directory
    assert_all_fail_with(path, ErrorCode.FILE_NOT_READABLE)


@pytest.mark.parametrize(
    "filename, tracks",
    [
        ("cut.mp4", AV_TRACKS),  # the index (moov) is written last, so it is lost
        ("cut.ogg", dict(audio=AudioTrack("libopus", 48000, "stereo"))),
    ],
)
def test_truncated_file_is_corrupt(clips, filename, tracks):
    truncated = clips.truncated(clips.make(filename, **tracks))
    calls = every_entry_point(truncated)
    if "video" not in tracks:
        del calls["video"]  # no video stream: that is a different error (NO_VIDEO_STREAM)
    # Each entry point on its own: one raising must not stand in for another.
    for name, call in calls.items():
        with pytest.raises(MediaError) as caught:
            call()
        assert caught.value.code is ErrorCode.CORRUPT_MEDIA, f"{name}: {caught.value}"


@pytest.mark.parametrize(
    "filename, codec",
    [
        # WebM is written to be playable while it downloads.
        ("cut.webm", "libopus"),
        # FLAC's header (STREAMINFO) and first frames are in the surviving half; the frame
        # the cut runs through does not decode and is skipped, as FFmpeg does.
        ("cut.flac", "flac"),
    ],
)
def test_truncated_streaming_container_decodes_what_is_there(clips, filename, codec):
    # Half a file is half a clip, and the missing half comes back as padding.
    truncated = clips.truncated(clips.make(filename, audio=AudioTrack(codec, 48000, "stereo", seconds=2.0)))
    assert probe(truncated).has_audio
    audio = decode_audio(truncated, sample_rate=16000, duration=2.0)
    assert 0.3 * 32000 < audio.valid_samples < 0.8 * 32000
    assert audio.skipped_packets <= 1


def test_bytes_overwritten_in_the_middle_is_corrupt(clips):
    corrupted = clips.corrupted(clips.make("flipped.mp4", **AV_TRACKS))
    # The header and first frames survive, so probing may succeed; decoding through the
    # damaged middle must not: 40 % of the packets are far more than the few bad ones
    # decoding skips (test_damaged_packets.py).
    with pytest.raises(MediaError) as caught:
        decode_video(corrupted, num_frames=16, size=32)
    assert caught.value.code is ErrorCode.TOO_MANY_BAD_PACKETS


FUZZ_SOURCES = {
    "fuzz.mp4": dict(video=VideoTrack(), audio=AudioTrack("aac")),
    "fuzz.mkv": dict(video=VideoTrack(), audio=AudioTrack("flac")),
    "fuzz.webm": dict(
        video=VideoTrack("libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8"}),
        audio=AudioTrack("libopus"),
    ),
    "fuzz.avi": dict(video=VideoTrack("mjpeg", pix_fmt="yuvj420p"), audio=AudioTrack("pcm_s16le")),
}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("filename", list(FUZZ_SOURCES))
def test_damaged_files_never_leak_a_foreign_exception(clips, filename, seed):
    source = clips.make(filename, **FUZZ_SOURCES[filename])
    rng = np.random.default_rng(seed)
    # 300 scattered byte flips, plus a random cut for odd seeds.
    data = np.frombuffer(source.read_bytes(), np.uint8).copy()
    data[rng.integers(0, len(data), 300)] ^= rng.integers(1, 256, 300, dtype=np.uint8)
    damaged = data.tobytes()
    if seed % 2:
        damaged = damaged[: rng.integers(len(damaged) // 4, len(damaged))]
    path = clips.write_bytes(f"damaged{seed}-{filename}", damaged)
    for call in every_entry_point(path).values():
        try:
            call()
        except MediaError as error:
            assert error.code in set(ErrorCode)


def test_file_too_large(clips):
    path = clips.make("av.mp4", **AV_TRACKS)
    assert_all_fail_with(path, ErrorCode.FILE_TOO_LARGE, MediaLimits(max_file_bytes=1000))


def test_frame_too_large(clips):
    path = clips.make("av.mp4", **AV_TRACKS)
    assert_all_fail_with(path, ErrorCode.FRAME_TOO_LARGE, MediaLimits(max_frame_pixels=32 * 32))


def test_duration_too_long(clips):
    path = clips.make("av.mp4", **AV_TRACKS)
    assert_all_fail_with(path, ErrorCode.DURATION_TOO_LONG, MediaLimits(max_duration_seconds=1.5))


def test_too_many_streams(clips):
    path = clips.directory / "five-audio-streams.mkv"
    with av.open(str(path), "w") as container:
        streams = [container.add_stream("pcm_s16le", rate=8000, layout="mono") for _ in range(5)]
        for stream in streams:
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 8000, 0, Fraction(1, 8000)
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    assert probe(path).has_audio  # fine under the default limit of 16
    assert_all_fail_with(path, ErrorCode.TOO_MANY_STREAMS, MediaLimits(max_streams=4))


def test_missing_modality_is_reported(clips):
    video_only = clips.make("video-only.mkv", video=VideoTrack())
    audio_only = clips.make("audio-only.mkv", audio=AudioTrack("flac", 48000, "mono"))

    with pytest.raises(MediaError) as caught:
        decode_audio(video_only, sample_rate=16000)
    assert caught.value.code is ErrorCode.NO_AUDIO_STREAM
    with pytest.raises(MediaError) as caught:
        decode_video(audio_only, num_frames=4, size=32)
    assert caught.value.code is ErrorCode.NO_VIDEO_STREAM


def _mux_garbage_video(path, audio_source=None):
    """A Matroska file whose H.264 "video" packets are random bytes."""
    rng = np.random.default_rng(3)
    with av.open(str(path), "w") as output:
        video = output.add_stream("h264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        if audio_source is not None:
            with av.open(str(audio_source)) as source:
                audio = output.add_stream_from_template(source.streams.audio[0])
                for packet in source.demux(audio=0):
                    if packet.dts is not None:
                        packet.stream = audio
                        output.mux(packet)
        for index in range(25):
            packet = av.Packet(rng.bytes(500))
            packet.stream = video
            packet.pts = packet.dts = index * 40
            packet.time_base = Fraction(1, 1000)
            output.mux(packet)
    return path


def test_undecodable_video_stream_is_not_counted(clips):
    audio_source = clips.make("source.m4a", audio=AudioTrack("aac", 48000, "stereo"))
    path = _mux_garbage_video(clips.directory / "garbage-video-good-audio.mkv", audio_source)

    info = probe(path)
    assert info.has_audio and not info.has_video


def test_no_decodable_stream(clips):
    path = _mux_garbage_video(clips.directory / "garbage-video.mkv")
    with pytest.raises(MediaError) as caught:
        probe(path)
    assert caught.value.code is ErrorCode.NO_DECODABLE_STREAM
