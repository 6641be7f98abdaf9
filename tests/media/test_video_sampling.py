"""decode_video returns exactly the frames on screen at the sampled times.

Each frame's bands encode its index (avserve.media.synthetic.index_pattern), so the test
reads back which frame it got and compares with the frame that should be on screen.
"""

from __future__ import annotations

import bisect

import numpy as np
import pytest

from avserve.media import ErrorCode, MediaError, decode_video, probe
from avserve.media.synthetic import VideoTrack, index_pattern, read_index_pattern

FPS = 25
TWO_SECONDS = 2 * FPS


def expected_indices(frame_times, start, end, count):
    """Index of the frame on screen at each segment centre of [start, end)."""
    step = (end - start) / count
    centres = [start + (i + 0.5) * step for i in range(count)]
    return [max(0, bisect.bisect_right(frame_times, t) - 1) for t in centres]


def decoded_indices(video):
    return [read_index_pattern(frame) for frame in video.frames]


CFR_TIMES = [i / FPS for i in range(TWO_SECONDS)]

GOP_VARIANTS = {
    "short GOP (5 frames)": ("gop5.mp4", VideoTrack(num_frames=TWO_SECONDS, gop=5)),
    "long GOP (single keyframe)": ("gop-single.mp4", VideoTrack(num_frames=TWO_SECONDS, gop=1000)),
    "long GOP mkv": ("gop-single.mkv", VideoTrack(num_frames=TWO_SECONDS, gop=1000)),
    "intra only (ffv1)": ("intra.mkv", VideoTrack("ffv1", num_frames=TWO_SECONDS)),
}


@pytest.mark.parametrize("variant", list(GOP_VARIANTS))
@pytest.mark.parametrize(
    "num_frames, start, duration",
    [(8, 0.0, None), (16, 0.0, None), (5, 0.5, 1.0), (3, 1.3, 0.4), (4, 1.0, 5.0)],
)
def test_sampled_frames_match_content(clips, variant, num_frames, start, duration):
    filename, track = GOP_VARIANTS[variant]
    path = clips.make(filename, video=track)
    video = decode_video(path, num_frames=num_frames, size=32, start=start, duration=duration)

    # A window past the end of the stream is clipped to the stream.
    end = min(start + duration, 2.0) if duration else 2.0
    expected = expected_indices(CFR_TIMES, start, end, num_frames)
    assert decoded_indices(video) == expected
    np.testing.assert_allclose(video.timestamps, np.array(expected) / FPS, atol=1e-3)


def test_long_gop_file_really_has_a_single_keyframe(clips):
    """Guard for the test above: it only proves the forward-only path if this holds."""
    import av

    filename, track = GOP_VARIANTS["long GOP (single keyframe)"]
    path = clips.make(filename, video=track)
    with av.open(str(path)) as container:
        keyframes = [p for p in container.demux(video=0) if p.is_keyframe]
    assert len(keyframes) == 1


@pytest.mark.parametrize("extension", ["mkv", "mp4"])
def test_variable_frame_rate_uses_presentation_times(clips, extension):
    # Irregular gaps from 10 ms to 150 ms: frame index and time are not proportional.
    gaps = np.random.default_rng(7).choice([0.01, 0.03, 0.07, 0.15], size=39)
    frame_times = [0.0, *np.cumsum(gaps).round(3)]
    track = VideoTrack(num_frames=40, frame_times=frame_times)
    path = clips.make(f"vfr.{extension}", video=track)
    end = probe(path).video.duration
    assert end is not None

    video = decode_video(path, num_frames=12, size=32)

    assert decoded_indices(video) == expected_indices(frame_times, 0.0, end, 12)


def test_more_samples_than_frames_repeats_frames(clips):
    path = clips.make("ten-frames.mp4", video=VideoTrack(num_frames=10, fps=10))
    video = decode_video(path, num_frames=16, size=32)

    indices = decoded_indices(video)
    assert indices == expected_indices([i / 10 for i in range(10)], 0.0, 1.0, 16)
    assert indices == sorted(indices) and len(set(indices)) == 10


def test_one_frame_video_repeats_its_frame(clips):
    path = clips.make("one-frame.mp4", video=VideoTrack(num_frames=1))
    assert probe(path).video.frame_count == 1

    video = decode_video(path, num_frames=4, size=(24, 40))

    assert video.frames.shape == (4, 24, 40, 3)
    assert decoded_indices(video) == [0, 0, 0, 0]


@pytest.mark.parametrize("size, shape", [(32, (32, 32)), ((50, 20), (50, 20)), ((61, 97), (61, 97)), ((122, 194), (122, 194))])
def test_resize_covers_the_target_then_centre_crops(clips, size, shape):
    # 97x61 lossless frames, down- and upscaled; crops only cut the width, so the bands survive.
    path = clips.make("odd-lossless.mkv", video=VideoTrack("ffv1", 97, 61, num_frames=10, fps=10))
    video = decode_video(path, num_frames=2, size=size)

    assert video.frames.shape == (2, *shape, 3)
    assert video.source_size == (61, 97)
    assert decoded_indices(video) == [2, 7]


def test_full_size_lossless_frames_are_pixel_exact(clips):
    path = clips.make("exact.mkv", video=VideoTrack("ffv1", 64, 64, num_frames=10, fps=10, pix_fmt="yuv444p"))
    video = decode_video(path, num_frames=2, size=64)

    for frame, index in zip(video.frames, [2, 7]):
        assert np.abs(frame.astype(int) - index_pattern(index, 64, 64)).max() <= 2


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_applied(clips, rotation):
    # 64 wide x 32 high as stored; a quarter turn makes it 32 wide x 64 high.
    track = VideoTrack(width=64, height=32, num_frames=10, fps=10, rotation=rotation, pix_fmt="yuv444p")
    path = clips.make(f"rotated{rotation}.mp4", video=track)
    sideways = rotation in (90, 270)

    info = probe(path).video
    assert info.rotation == rotation
    assert (info.display_width, info.display_height) == ((32, 64) if sideways else (64, 32))

    upright = (64, 32) if sideways else (32, 64)
    video = decode_video(path, num_frames=2, size=upright)
    assert video.rotation == rotation and video.source_size == upright
    for frame, index in zip(video.frames, [2, 7]):
        expected = np.rot90(index_pattern(index, 32, 64), k=rotation // 90)
        assert np.abs(frame.astype(int) - expected).mean() < 10


@pytest.mark.parametrize(
    "start, duration",
    [(-0.1, 1.0), (0.0, 0.0), (0.0, -1.0), (2.0, None), (5.0, 1.0), (float("nan"), None)],
)
def test_invalid_windows_are_rejected(clips, start, duration):
    path = clips.make("gop5.mp4", video=GOP_VARIANTS["short GOP (5 frames)"][1])
    with pytest.raises(MediaError) as caught:
        decode_video(path, num_frames=4, size=32, start=start, duration=duration)
    assert caught.value.code is ErrorCode.INVALID_WINDOW


# --- fast sampling: the keyframe nearest each target ---------------------------------------


def keyframe_indices(path):
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(round(float(p.pts * stream.time_base) * FPS) for p in container.demux(stream) if p.is_keyframe and p.pts is not None)


def expected_fast_indices(keyframes, start, end, count):
    """The keyframe nearest each segment centre when within a segment's length, else None (the
    frame is then a reference frame at or before the exact one: checked separately)."""
    step = (end - start) / count
    chosen = []
    for i in range(count):
        centre = start + (i + 0.5) * step
        nearest = min(keyframes, key=lambda k: (abs(k / FPS - centre), k))
        chosen.append(nearest if abs(nearest / FPS - centre) <= step + 1e-6 else None)
    return chosen


def reference_frame_indices(path):
    """Indices of the frames other frames may reference (keyframes, P-frames, reference B-frames)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        return sorted(round(frame.time * FPS) for frame in container.decode(stream))


@pytest.mark.parametrize("variant", list(GOP_VARIANTS))
@pytest.mark.parametrize("num_frames, start, duration", [(8, 0.0, None), (5, 0.5, 1.0), (3, 1.3, 0.4)])
def test_fast_sampling_takes_the_nearest_keyframe(clips, variant, num_frames, start, duration):
    filename, track = GOP_VARIANTS[variant]
    path = clips.make(filename, video=track)
    video = decode_video(path, num_frames=num_frames, size=32, start=start, duration=duration, sampling="fast")

    end = min(start + duration, 2.0) if duration else 2.0
    expected = expected_fast_indices(keyframe_indices(path), start, end, num_frames)
    exact = expected_indices(CFR_TIMES, start, end, num_frames)
    references = reference_frame_indices(path)
    got = decoded_indices(video)
    for index, keyframe, exact_index in zip(got, expected, exact, strict=True):
        if keyframe is not None:
            assert index == keyframe
        else:  # the last reference frame at or before the exact frame
            assert index == max(r for r in references if r <= exact_index), (got, expected, exact)
    np.testing.assert_allclose(video.timestamps, np.array(got) / FPS, atol=1e-3)
    assert video.sampling == "fast"
    # The reported offset is the true distance of each choice from its target.
    targets = [start + (i + 0.5) * (end - start) / num_frames for i in range(num_frames)]
    np.testing.assert_allclose(video.targets, targets)
    assert video.max_offset == pytest.approx(max(abs(g / FPS - t) for g, t in zip(got, targets)), abs=1e-3)


def test_fast_sampling_decodes_only_keyframes_on_a_short_gop(clips):
    """Guard: on the 5-frame GOP every choice is a keyframe (the fallback to exact never ran)."""
    filename, track = GOP_VARIANTS["short GOP (5 frames)"]
    path = clips.make(filename, video=track)
    video = decode_video(path, num_frames=8, size=32, sampling="fast")
    assert all(index % 5 == 0 for index in decoded_indices(video))
    exact = decode_video(path, num_frames=8, size=32)
    assert video.max_offset > exact.max_offset  # and they are not the exact frames


def test_unknown_sampling_mode_is_rejected(clips):
    path = clips.make("gop5.mp4", video=GOP_VARIANTS["short GOP (5 frames)"][1])
    with pytest.raises(ValueError, match="sampling"):
        decode_video(path, num_frames=4, size=32, sampling="keyframes")
