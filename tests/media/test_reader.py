"""read_media: one worker call probes the upload and decodes exactly what the route needs.

What it returns must be what the separate calls return (the gateway used to make three, and
training decodes with them): bit for bit, audio and video, every window.
"""

from __future__ import annotations

import numpy as np
import pytest

from avserve.media import ErrorCode, MediaError, decode_audio, decode_video, probe
from avserve.media.reader import AudioInput, ClipWindow, DecodePlan, VideoInput, WindowPlan, read_media
from avserve.media.synthetic import AudioTrack, VideoTrack

AV = frozenset({"audio", "video"})
AUDIO_ONLY = frozenset({"audio"})
VIDEO_ONLY = frozenset({"video"})


def av_clip(clips):
    return clips.make(
        "reader-av.mp4",
        video=VideoTrack(num_frames=75, fps=25, gop=10, content="footage"),
        audio=AudioTrack(sample_rate=44100, layout="stereo", seconds=3.0),
    )


def plans(window: WindowPlan, sampling="exact"):
    video = VideoInput(4, 32, 48, sampling)
    return {
        AV: DecodePlan(AudioInput(16000), video, window),
        AUDIO_ONLY: DecodePlan(AudioInput(16000), None, window),
        VIDEO_ONLY: DecodePlan(None, video, window),
    }


@pytest.mark.parametrize("sampling", ["exact", "fast"])
@pytest.mark.parametrize("window", [WindowPlan(1.0), WindowPlan(1.0, start=0.4, duration=2.5), WindowPlan(None, start=0.5)])
def test_equals_the_separate_calls_bit_for_bit(clips, sampling, window):
    path = av_clip(clips)
    read = read_media(path, plans(window, sampling))

    assert read.present == AV
    assert read.info == probe(path)
    assert read.windows == window.windows(read.info.duration)
    assert len(read.audio) == len(read.video) == len(read.windows) >= 1
    for clip_window, audio, video in zip(read.windows, read.audio, read.video):
        alone_audio = decode_audio(path, sample_rate=16000, start=clip_window.start, duration=clip_window.duration)
        alone_video = decode_video(
            path, num_frames=4, size=(32, 48), start=clip_window.start, duration=clip_window.duration, sampling=sampling
        )
        np.testing.assert_array_equal(audio.samples, alone_audio.samples)
        np.testing.assert_array_equal(video.frames, alone_video.frames)
        np.testing.assert_array_equal(video.timestamps, alone_video.timestamps)
    assert read.probe_seconds > 0 and read.decode_seconds > 0


def test_decodes_only_what_the_plan_for_the_streams_found_asks(clips):
    audio_only = clips.make("reader-audio.m4a", audio=AudioTrack(seconds=2.0))
    read = read_media(audio_only, plans(WindowPlan(1.0)))
    assert read.present == AUDIO_ONLY and len(read.audio) == 1 and read.video == []

    # A present set without a plan (no model serves it) is probed, not decoded.
    read = read_media(av_clip(clips), {AUDIO_ONLY: plans(WindowPlan(1.0))[AUDIO_ONLY]})
    assert read.present == AV and read.windows is None and read.audio == [] and read.video == []


def test_a_window_that_does_not_fit_is_left_to_the_caller(clips):
    path = av_clip(clips)
    read = read_media(path, plans(WindowPlan(1.0, start=10.0)))
    assert read.windows is None and read.audio == [] and read.video == []
    with pytest.raises(MediaError) as caught:
        WindowPlan(1.0, start=10.0).windows(read.info.duration)
    assert caught.value.code is ErrorCode.INVALID_WINDOW


def test_window_plan_splits_the_span_into_model_length_windows():
    assert WindowPlan(2.0).windows(10.0) == [ClipWindow(0.0, 2.0)]
    assert WindowPlan(2.0, start=1.0, duration=5.0).windows(10.0) == [
        ClipWindow(1.0, 2.0), ClipWindow(3.0, 2.0), ClipWindow(5.0, 1.0)
    ]
    # Cut at the end of the clip: "60 s" of a 3 s file scores the 3 s there are.
    assert WindowPlan(2.0, duration=60.0).windows(3.0) == [ClipWindow(0.0, 2.0), ClipWindow(2.0, 1.0)]
    with pytest.raises(MediaError):
        WindowPlan(2.0, duration=20.0, max_windows=4).windows(30.0)


def test_broken_files_raise_media_errors(clips):
    path = clips.truncated(av_clip(clips), 0.02)
    with pytest.raises(MediaError):
        read_media(path, plans(WindowPlan(1.0)))
