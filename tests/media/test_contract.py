"""The public surface other packages code against: names, codes, JSON shapes."""

from __future__ import annotations

import json

import pytest

import avserve.media as media
from avserve.media import DEFAULT_LIMITS, ErrorCode, MediaError, MediaLimits, probe
from avserve.media.synthetic import AudioTrack, VideoTrack


def test_public_names_are_exported():
    expected = {
        "MediaLimits", "DEFAULT_LIMITS", "MediaError", "ErrorCode", "MediaInfo",
        "AudioStreamInfo", "VideoStreamInfo", "probe", "decode_audio", "DecodedAudio",
        "decode_video", "DecodedVideo",
    }
    assert expected <= set(media.__all__)
    assert all(hasattr(media, name) for name in expected)


def test_error_code_values_are_stable():
    # Clients branch on these strings: changing one is a breaking API change.
    assert {code.value for code in ErrorCode} >= {
        "empty_file", "file_too_large", "unsupported_media", "corrupt_media",
        "no_decodable_stream", "no_audio_stream", "no_video_stream", "too_many_streams",
        "frame_too_large", "duration_too_long", "invalid_window", "too_many_bad_packets",
    }
    assert ErrorCode("corrupt_media") is ErrorCode.CORRUPT_MEDIA
    assert isinstance(ErrorCode.CORRUPT_MEDIA, str)


def test_media_error_serialises_code_and_message():
    error = MediaError(ErrorCode.EMPTY_FILE, "the file is empty")
    assert error.code is ErrorCode.EMPTY_FILE and error.message == "the file is empty"
    assert json.loads(json.dumps(error.to_dict())) == {"code": "empty_file", "message": "the file is empty"}
    assert "empty_file" in str(error)


def test_limits_are_frozen_and_validated():
    assert DEFAULT_LIMITS.max_file_bytes == 256 * 1024 * 1024
    assert DEFAULT_LIMITS.max_decode_seconds == 60
    with pytest.raises(AttributeError):
        DEFAULT_LIMITS.max_streams = 100  # type: ignore[misc]
    with pytest.raises(ValueError):
        MediaLimits(max_decode_seconds=0)
    with pytest.raises(ValueError):
        MediaLimits(max_streams=0)
    assert (DEFAULT_LIMITS.max_bad_packets, DEFAULT_LIMITS.max_bad_packet_bytes) == (16, 1024 * 1024)
    assert MediaLimits(max_bad_packets=0).max_bad_packets == 0  # strict: the first bad packet fails
    with pytest.raises(ValueError):
        MediaLimits(max_bad_packet_bytes=-1)


def test_media_info_to_dict_is_json_safe(clips):
    path = clips.make("contract.mp4", video=VideoTrack(), audio=AudioTrack("aac", 48000, "mono"))
    info = probe(path)

    data = json.loads(json.dumps(info.to_dict()))

    assert data["has_audio"] is True and data["has_video"] is True
    assert data["audio"]["sample_rate"] == 48000 and data["audio"]["layout"] == "mono"
    assert data["video"]["width"] == 64 and data["video"]["rotation"] == 0
    assert data["container"].startswith("mov,mp4")
