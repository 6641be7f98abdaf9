"""Isolated damaged packets are skipped, counted and reported, as FFmpeg's tools do (issue 13).

Each file is a clean synthetic clip with the payload of one packet of one stream damaged:
overwritten in place (container, index and timestamps intact) or cut to a third (remuxed).
Both streams must still probe and decode, the damage must cost only the time the packet
covered, and past `MediaLimits.max_bad_packets` / `max_bad_packet_bytes` the decoders refuse
the stream with TOO_MANY_BAD_PACKETS.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from avserve.media import ErrorCode, MediaError, MediaLimits, decode_audio, decode_video, probe
from avserve.media.synthetic import AudioTrack, VideoTrack, damage_packets, read_index_pattern

pytestmark = pytest.mark.timeout(60)

RATE = 16000  # what the decoded audio is compared at
FRAMES = 50  # video frames sampled over the 2 s clip: every one, so every packet is decoded
GOP = 10

# The file: an AVI with MPEG-4 Part 2 video and AC-3 audio; and the usual MP4.
SOURCES = {
    "avi": dict(video=VideoTrack("mpeg4", num_frames=50, gop=GOP), audio=AudioTrack("ac3", 48000, "stereo", seconds=2.0)),
    "mp4": dict(video=VideoTrack(num_frames=50, gop=GOP), audio=AudioTrack("aac", 48000, "stereo", seconds=2.0)),
}
# Longest stretch of the decoded audio a single damaged packet may change: the packet (AC-3:
# 32 ms; AAC: 21 ms; an AVI chunk may hold two), plus the decoder's overlap with the next one
# and the resampler's filter.
MAX_HOLE_SECONDS = 0.08


def source(clips, ext):
    return clips.make(f"undamaged.{ext}", **SOURCES[ext])


def damaged(clips, ext, stream, packets, mode="overwrite"):
    name = f"{stream}-{'-'.join(map(str, packets))}-{mode}.{ext}"
    return damage_packets(source(clips, ext), clips.directory / name, stream=stream, packets=packets, mode=mode)


def decode_both(path, limits=MediaLimits()):
    audio = decode_audio(path, sample_rate=RATE, limits=limits)
    video = decode_video(path, num_frames=FRAMES, size=64, limits=limits)
    return audio, video


def frame_indices(video):
    return [read_index_pattern(frame) for frame in video.frames]


@pytest.mark.parametrize("ext", list(SOURCES))
@pytest.mark.parametrize("stream", ["audio", "video"])
@pytest.mark.parametrize("which", ["first", "middle"])
@pytest.mark.parametrize("mode", ["overwrite", "truncate"])
def test_one_damaged_packet_is_skipped(clips, ext, stream, which, mode):
    # The same file without the damage (for "truncate", remuxed the same way).
    clean_audio, clean_video = decode_both(damaged(clips, ext, stream, [], mode))
    path = damaged(clips, ext, stream, [0 if which == "first" else 20], mode)

    info = probe(path)
    assert info.has_audio and info.has_video  # served as audio+video, not as the other stream alone
    probed = {"audio": info.audio.skipped_packets, "video": info.video.skipped_packets}
    assert probed == {"audio": 0, "video": 0, stream: 1 if which == "first" else 0}

    audio, video = decode_both(path)
    skipped = {"audio": audio.skipped_packets, "video": video.skipped_packets}
    # A decoder may conceal a cut packet instead of rejecting it (MPEG-4 Part 2 does,
    # mid-stream): then nothing was skipped.
    concealed = ext == "avi" and stream == "video" and which == "middle" and mode == "truncate"
    assert skipped == {"audio": 0, "video": 0, stream: 0 if concealed else 1}
    assert (audio.skipped_bytes > 0) == (skipped["audio"] > 0)
    assert (video.skipped_bytes > 0) == (skipped["video"] > 0)

    # The whole clip is still there...
    assert abs(audio.duration - clean_audio.duration) < 0.07
    assert len(video.frames) == FRAMES
    if stream == "video":
        assert np.array_equal(audio.samples, clean_audio.samples)
        # ... and a lost frame costs at most the frames that depend on it, up to the next keyframe.
        changed = np.flatnonzero(np.array(frame_indices(video)) != frame_indices(clean_video))
        assert len(changed) <= GOP + 2 and changed[-1] < FRAMES - 1 if len(changed) else True
    else:
        assert frame_indices(video) == frame_indices(clean_video)
        if not (ext == "avi" and mode == "truncate"):
            # Intact timestamps: silence where the packet was, the rest in place.
            # (An AVI's audio timestamps count bytes, so a shorter chunk moves what follows.)
            differs = np.flatnonzero(np.abs(audio.samples - clean_audio.samples) > 0.01)
            assert len(differs) and (differs[-1] - differs[0]) / RATE < MAX_HOLE_SECONDS


def test_a_hole_in_the_audio_is_silence_at_the_packets_time(clips):
    clean = decode_audio(source(clips, "avi"), sample_rate=RATE)
    audio = decode_audio(damaged(clips, "avi", "audio", [20]), sample_rate=RATE)
    block = RATE // 100  # 10 ms: longer than a period of the 440 Hz tone
    loudness = np.abs(audio.samples[: len(audio.samples) // block * block]).reshape(-1, block).max(axis=1)
    hole = np.flatnonzero(loudness < 0.01) * block
    assert len(hole) and hole[0] / RATE > 0.5 and (hole[-1] - hole[0]) / RATE < MAX_HOLE_SECONDS
    assert len(audio.samples) == len(clean.samples)
    after = slice(hole[-1] + 2 * block + RATE // 20, None)  # 50 ms on: the decoder has recovered
    np.testing.assert_allclose(audio.samples[after], clean.samples[after], atol=1e-3)


def test_damage_in_every_stream_at_once(clips):
    path = damaged(clips, "mp4", "audio", [0, 30])
    path = damage_packets(path, clips.directory / "both.mp4", stream="video", packets=[0, 33], seed=1)
    info = probe(path)
    assert info.has_audio and info.has_video
    audio, video = decode_both(path)
    assert (audio.skipped_packets, video.skipped_packets) == (2, 2)
    # The results cross process boundaries (the gateway's decoding workers) intact.
    for result in (info, audio, video):
        copy = pickle.loads(pickle.dumps(result))
        assert copy.__class__ is result.__class__
    assert pickle.loads(pickle.dumps(audio)).skipped_bytes == audio.skipped_bytes
    assert pickle.loads(pickle.dumps(info)) == info


@pytest.mark.parametrize("stream", ["audio", "video"])
def test_more_bad_packets_than_the_limit(clips, stream):
    path = damaged(clips, "avi", stream, [2, 12, 22])  # packets decode_video decodes too
    decode = decode_audio if stream == "audio" else decode_video
    kwargs = dict(sample_rate=RATE) if stream == "audio" else dict(num_frames=FRAMES, size=64)

    assert getattr(decode(path, **kwargs, limits=MediaLimits(max_bad_packets=3)), "skipped_packets") == 3
    for limits in (MediaLimits(max_bad_packets=2), MediaLimits(max_bad_packet_bytes=40)):
        with pytest.raises(MediaError) as caught:
            decode(path, **kwargs, limits=limits)
        assert caught.value.code is ErrorCode.TOO_MANY_BAD_PACKETS
        assert f"the {stream} stream" in caught.value.message
    # The probe stops at the first frame, before the damage.
    assert probe(path, MediaLimits(max_bad_packets=0)).has_audio


def test_a_long_run_of_damage_is_refused_at_the_default_limits(clips):
    path = damaged(clips, "mp4", "audio", list(range(30, 60)))
    assert probe(path).has_audio  # the first frames are fine
    with pytest.raises(MediaError) as caught:
        decode_audio(path, sample_rate=RATE)
    assert caught.value.code is ErrorCode.TOO_MANY_BAD_PACKETS


def test_a_stream_damaged_from_the_start_beyond_the_limit_is_not_counted(clips):
    # (MP4: an AVI's AC-3 parser would join three damaged chunks into one bad "packet".)
    path = damaged(clips, "mp4", "audio", [0, 1, 2])
    assert probe(path).audio.skipped_packets == 3
    info = probe(path, MediaLimits(max_bad_packets=2))
    assert info.has_video and not info.has_audio  # as for a stream that never decodes
