"""Every container/codec combination we expect from users probes and decodes correctly.

All clips carry the same content -- 25 frames at 25 fps whose bands encode the frame
index, and a 440 Hz tone -- so each format is checked against what was written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from avserve.media import decode_audio, decode_video, probe
from avserve.media.synthetic import AudioTrack, VideoTrack, read_index_pattern

FAST_VP9 = {"deadline": "realtime", "cpu-used": "8"}


@dataclass(frozen=True)
class Case:
    filename: str
    video: VideoTrack | None
    audio: AudioTrack | None
    codecs: tuple[str | None, str | None]  # (video, audio) decoder names probe should report


MATRIX = {
    "mp4 h264+aac": Case("h264-aac.mp4", VideoTrack(width=96, height=64), AudioTrack("aac", 48000, "stereo"), ("h264", "aac")),
    "webm vp9+opus": Case("vp9-opus.webm", VideoTrack("libvpx-vp9", 64, 48, options=FAST_VP9), AudioTrack("libopus", 48000, "stereo"), ("vp9", "opus")),
    "mkv h264+flac mono": Case("h264-flac.mkv", VideoTrack(), AudioTrack("flac", 44100, "mono"), ("h264", "flac")),
    "mov h264+aac 5.1": Case("h264-aac51.mov", VideoTrack(), AudioTrack("aac", 48000, "5.1"), ("h264", "aac")),
    "avi mjpeg+pcm": Case("mjpeg-pcm.avi", VideoTrack("mjpeg", pix_fmt="yuvj420p"), AudioTrack("pcm_s16le", 44100, "stereo"), ("mjpeg", "pcm_s16le")),
    "mkv ffv1 97x61 + flac 5.1": Case("ffv1-flac51.mkv", VideoTrack("ffv1", 97, 61), AudioTrack("flac", 48000, "5.1"), ("ffv1", "flac")),
    "mp4 video only 97x61": Case("video-only.mp4", VideoTrack(width=97, height=61, pix_fmt="yuv444p"), None, ("h264", None)),
    "mp4 audio only": Case("audio-only.mp4", None, AudioTrack("aac", 16000, "stereo"), (None, "aac")),
    "ogg vorbis": Case("vorbis.ogg", None, AudioTrack("vorbis", 44100, "stereo"), (None, "vorbis")),
    "ogg opus mono": Case("opus.ogg", None, AudioTrack("libopus", 48000, "mono"), (None, "opus")),
    "wav 8 kHz mono": Case("pcm-8k.wav", None, AudioTrack("pcm_s16le", 8000, "mono"), (None, "pcm_s16le")),
    "flac 96 kHz": Case("96k.flac", None, AudioTrack("flac", 96000, "stereo"), (None, "flac")),
    "mp3": Case("lame.mp3", None, AudioTrack("libmp3lame", 44100, "stereo"), (None, "mp3float")),
    "m4a": Case("aac.m4a", None, AudioTrack("aac", 44100, "mono"), (None, "aac")),
}


WITH_AUDIO = [name for name, case in MATRIX.items() if case.audio]
WITH_VIDEO = [name for name, case in MATRIX.items() if case.video]


def make(clips, name):
    case = MATRIX[name]
    return case, clips.make(case.filename, video=case.video, audio=case.audio)


@pytest.mark.parametrize("name", list(MATRIX))
def test_probe_reports_the_streams_that_were_written(clips, name):
    case, path = make(clips, name)
    info = probe(path)

    assert info.has_audio == (case.audio is not None)
    assert info.has_video == (case.video is not None)
    assert info.duration == pytest.approx(1.0, abs=0.1)
    assert info.size_bytes == path.stat().st_size
    if case.audio:
        assert info.audio.codec == case.codecs[1]
        assert info.audio.sample_rate == case.audio.sample_rate
        assert info.audio.channels == {"mono": 1, "stereo": 2, "5.1": 6}[case.audio.layout]
    if case.video:
        assert info.video.codec == case.codecs[0]
        assert (info.video.width, info.video.height) == (case.video.width, case.video.height)
        assert info.video.fps == pytest.approx(25.0)
        assert info.video.rotation == 0
        assert info.video.duration == pytest.approx(1.0, abs=0.1)
    assert set(info.to_dict()) >= {"path", "container", "duration", "audio", "video", "has_audio", "has_video"}


@pytest.mark.parametrize("name", WITH_AUDIO)
def test_audio_decodes_to_a_440_hz_mono_tone(clips, name):
    case, path = make(clips, name)
    audio = decode_audio(path, sample_rate=16000, duration=1.0)

    assert audio.samples.dtype == np.float32 and audio.samples.shape == (16000,)
    assert audio.source_sample_rate == case.audio.sample_rate
    assert audio.valid_samples >= 15_500  # lossy codecs may trim a few ms at the edges
    assert np.abs(audio.samples).max() <= 1.0
    spectrum = np.abs(np.fft.rfft(audio.samples))
    assert np.argmax(spectrum) * 16000 / len(audio.samples) == pytest.approx(440, abs=2)
    # Every channel carries the tone at 0.5, so the downmix must too.
    middle = audio.samples[4000:12000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.15)


@pytest.mark.parametrize("name", WITH_VIDEO)
def test_video_frames_are_the_expected_ones(clips, name):
    case, path = make(clips, name)
    video = decode_video(path, num_frames=4, size=32)

    assert video.frames.dtype == np.uint8 and video.frames.shape == (4, 32, 32, 3)
    assert video.source_size == (case.video.height, case.video.width)
    # Segment centres 0.125, 0.375, 0.625, 0.875 s at 25 fps.
    assert [read_index_pattern(frame) for frame in video.frames] == [3, 9, 15, 21]
    np.testing.assert_allclose(video.timestamps, np.array([3, 9, 15, 21]) / 25, atol=1e-3)
