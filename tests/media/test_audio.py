"""decode_audio: the right signal, at the right place in the window, at the right length."""

from __future__ import annotations

import numpy as np
import pytest

from avserve.media import ErrorCode, MediaError, MediaLimits, decode_audio
from avserve.media.synthetic import AudioTrack

RATE = 16000


def peak_hz(samples: np.ndarray, sample_rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * sample_rate / len(samples))


def first_loud_sample(samples: np.ndarray, threshold: float = 0.1) -> int:
    return int(np.argmax(np.abs(samples) > threshold))


@pytest.mark.parametrize(
    "filename, track",
    [
        ("tone-44k-stereo.wav", AudioTrack("pcm_s16le", 44100, "stereo")),
        ("tone-48k-51.flac", AudioTrack("flac", 48000, "5.1")),
        ("tone-48k-51.mp4", AudioTrack("aac", 48000, "5.1")),
        ("tone-44k-51.mkv", AudioTrack("aac", 44100, "5.1")),
    ],
)
def test_tone_resamples_to_16k_mono_with_its_pitch(clips, filename, track):
    audio = decode_audio(clips.make(filename, audio=track), sample_rate=RATE)

    assert audio.sample_rate == RATE and audio.samples.dtype == np.float32
    # AAC pads its last frame; in Matroska nothing trims that, so allow up to 30 ms.
    assert audio.samples.ndim == 1 and len(audio.samples) == pytest.approx(RATE, abs=0.03 * RATE)
    assert audio.source_channels == {"stereo": 2, "5.1": 6}[track.layout]
    assert peak_hz(audio.samples) == pytest.approx(440, abs=2)
    assert np.abs(audio.samples).max() <= 1.0


ONSET = 0.6  # seconds of silence before the tone
ONSET_CLIPS = {
    "wav": ("onset.wav", AudioTrack("pcm_s16le", 48000, "mono", seconds=2.0, onset=ONSET)),
    "flac": ("onset.flac", AudioTrack("flac", 44100, "stereo", seconds=2.0, onset=ONSET)),
    "aac in mp4": ("onset.mp4", AudioTrack("aac", 48000, "stereo", seconds=2.0, onset=ONSET)),
    "mp3": ("onset.mp3", AudioTrack("libmp3lame", 44100, "stereo", seconds=2.0, onset=ONSET)),
    "opus in ogg": ("onset.ogg", AudioTrack("libopus", 48000, "stereo", seconds=2.0, onset=ONSET)),
}


@pytest.mark.parametrize("kind", list(ONSET_CLIPS))
@pytest.mark.parametrize("start", [0.0, 0.25, 0.5])
def test_window_places_a_known_onset_correctly(clips, kind, start):
    filename, track = ONSET_CLIPS[kind]
    audio = decode_audio(clips.make(filename, audio=track), sample_rate=RATE, start=start, duration=1.0)

    assert len(audio.samples) == RATE and audio.start == start
    expected = round((ONSET - start) * RATE)
    # Lossy codecs smear the attack a little; 3 ms is far below one video frame.
    assert abs(first_loud_sample(audio.samples) - expected) <= 0.003 * RATE


def test_window_seeks_into_the_right_second_of_a_long_clip(clips):
    # 30 s whose pitch steps up 20 Hz every second: a window's pitch says where it is.
    track = AudioTrack("pcm_s16le", 8000, "mono", seconds=30.0, tone_hz=300, step_hz=20)
    path = clips.make("stepped.wav", audio=track)
    for second in (3, 17, 29):
        audio = decode_audio(path, sample_rate=RATE, start=second + 0.1, duration=0.8)
        assert peak_hz(audio.samples) == pytest.approx(300 + 20 * second, abs=3)


def test_short_clip_is_zero_padded_and_reports_valid_samples(clips):
    path = clips.make("one-second.wav", audio=AudioTrack("pcm_s16le", 48000, "mono"))

    audio = decode_audio(path, sample_rate=RATE, start=0.25, duration=2.0)

    assert len(audio.samples) == 2 * RATE
    assert audio.valid_samples == pytest.approx(0.75 * RATE, abs=2)
    assert np.all(audio.samples[audio.valid_samples :] == 0)
    assert np.abs(audio.samples[: audio.valid_samples]).max() > 0.4


def test_open_window_runs_to_the_end_capped_by_the_limit(clips):
    path = clips.make("one-second.wav", audio=AudioTrack("pcm_s16le", 48000, "mono"))

    whole = decode_audio(path, sample_rate=RATE, start=0.5)
    assert len(whole.samples) == whole.valid_samples == pytest.approx(0.5 * RATE, abs=2)

    capped = decode_audio(path, sample_rate=RATE, limits=MediaLimits(max_decode_seconds=0.3))
    assert len(capped.samples) == round(0.3 * RATE)


@pytest.mark.parametrize(
    "start, duration", [(-1.0, 1.0), (0.0, 0.0), (0.0, -2.0), (1.0, None), (3.0, 1.0), (0.0, 61.0)]
)
def test_invalid_windows_are_rejected(clips, start, duration):
    path = clips.make("one-second.wav", audio=AudioTrack("pcm_s16le", 48000, "mono"))
    with pytest.raises(MediaError) as caught:
        decode_audio(path, sample_rate=RATE, start=start, duration=duration)
    assert caught.value.code is ErrorCode.INVALID_WINDOW
