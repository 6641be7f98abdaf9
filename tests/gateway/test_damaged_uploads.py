"""Uploads with damaged packets are answered as audio+video, with the skipped packets reported (issue 13).

The files are built here: clean synthetic clips (the issue's AVI with MPEG-4 video and AC-3
audio, and an H.264 + AAC MP4) with one packet's payload overwritten, first or in the middle,
in either stream. Past AVSERVE_MAX_BAD_PACKETS the answer is a 422 `too_many_bad_packets`.
"""

from __future__ import annotations

import pytest
from gateway_helpers import FAMILY, assert_error, post_clip, wait_until_no_uploads
from prometheus_client.parser import text_string_to_metric_families

from avserve.media.synthetic import AudioTrack, VideoTrack, damage_packets, write_clip

# zorro_tiny's inputs: 2 s of 16 kHz audio, 4 frames; the clip is one model window.
VIDEO = dict(width=64, height=48, fps=25, num_frames=50, gop=10, content="footage")
SOURCES = {
    "avi": dict(video=VideoTrack("mpeg4", **VIDEO), audio=AudioTrack("ac3", 48000, "stereo", seconds=2.0)),
    "mp4": dict(video=VideoTrack(**VIDEO), audio=AudioTrack("aac", 48000, "stereo", seconds=2.0, step_hz=200.0)),
}
# Packet indices: the first, and one inside the stream that decoding the model's 4 frames
# (the first at 0.25 s) and 2 s of audio reads.
PACKETS = {("audio", "first"): 0, ("audio", "middle"): 30, ("video", "first"): 0, ("video", "middle"): 4}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    directory = tmp_path_factory.mktemp("damaged")
    sources = {ext: write_clip(directory / f"clean.{ext}", **tracks) for ext, tracks in SOURCES.items()}

    def make(ext: str, stream: str, which: str | list[int]):
        packets = [PACKETS[stream, which]] if isinstance(which, str) else which
        name = f"{stream}-{'-'.join(map(str, packets))}.{ext}"
        return damage_packets(sources[ext], directory / name, stream=stream, packets=packets)

    make.sources = sources
    return make


def skip_counters(client) -> dict[tuple[str, str], float]:
    """(metric sample name, stream) -> value of the skipped-packet counters."""
    return {
        (sample.name, sample.labels["stream"]): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        if family.name in ("avserve_skipped_packets", "avserve_skipped_packet_bytes")
        for sample in family.samples
        if sample.name.endswith("_total")
    }


@pytest.fixture(scope="module")
def strict_gateway(gateway_factory, serving_repository):
    return gateway_factory(repository=serving_repository, default_model=FAMILY, max_bad_packets=1)


@pytest.mark.parametrize("ext", list(SOURCES))
@pytest.mark.parametrize("stream", ["audio", "video"])
@pytest.mark.parametrize("which", ["first", "middle"])
def test_damaged_packet_is_skipped_and_reported(embedded_gateway, damaged, ext, stream, which):
    with embedded_gateway.client() as client:
        clean = post_clip(client, damaged.sources[ext])
        response = post_clip(client, damaged(ext, stream, which))
    assert clean.status_code == 200 and response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == f"{FAMILY}_av"
    assert body["modalities"]["present"] == ["audio", "video"] and not body["modalities"]["degraded"]
    media = body["media"]
    assert media["audio"]["skipped_packets"] == (stream == "audio")
    assert media["video"]["skipped_packets"] == (stream == "video")
    assert (media[stream]["skipped_bytes"] > 0) and media["video" if stream == "audio" else "audio"]["skipped_bytes"] == 0
    assert clean.json()["media"]["audio"]["skipped_packets"] == clean.json()["media"]["video"]["skipped_packets"] == 0
    # One packet is a few tens of milliseconds: the answer barely moves.
    assert body["predictions"][0]["label"] == clean.json()["predictions"][0]["label"]


def test_skipped_packets_are_counted_in_the_metrics(embedded_gateway, damaged):
    both = damage_packets(damaged("mp4", "audio", [5, 40]), damaged.sources["mp4"].with_name("both.mp4"),
                          stream="video", packets=[0])  # fmt: skip
    with embedded_gateway.client() as client:
        before = skip_counters(client)
        response = post_clip(client, both)
        after = skip_counters(client)
    assert response.status_code == 200, response.text
    media = response.json()["media"]
    assert (media["audio"]["skipped_packets"], media["video"]["skipped_packets"]) == (2, 1)
    assert set(before) == {(name, stream) for name in ("avserve_skipped_packets_total",
                           "avserve_skipped_packet_bytes_total") for stream in ("audio", "video")}  # fmt: skip
    for stream in ("audio", "video"):
        grew = {name: after[name, stream] - before[name, stream] for name, _ in before}
        assert grew == {
            "avserve_skipped_packets_total": media[stream]["skipped_packets"],
            "avserve_skipped_packet_bytes_total": media[stream]["skipped_bytes"],
        }


@pytest.mark.parametrize("stream", ["audio", "video"])
def test_more_bad_packets_than_the_limit_is_a_422(strict_gateway, damaged, stream):
    packets = [30, 35] if stream == "audio" else [3, 5]
    with strict_gateway.client() as client:
        assert post_clip(client, damaged("mp4", stream, "middle")).status_code == 200  # one is within the limit
        response = post_clip(client, damaged("mp4", stream, packets))
    body = assert_error(response, 422, "too_many_bad_packets")
    assert f"the {stream} stream" in body["error"]["message"]
    assert wait_until_no_uploads(strict_gateway) == []


def test_a_stream_bad_from_the_start_beyond_the_limit_is_left_out(strict_gateway, damaged):
    # As for a stream that never decodes: the probe does not count it, the other is served.
    with strict_gateway.client() as client:
        response = post_clip(client, damaged("mp4", "audio", [0, 1]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == f"{FAMILY}_video" and body["modalities"]["present"] == ["video"]
    assert body["media"]["audio"] is None


def test_limits_come_from_avserve_settings(monkeypatch):
    from avserve.gateway import GatewaySettings

    monkeypatch.setenv("AVSERVE_MAX_BAD_PACKETS", "3")
    monkeypatch.setenv("AVSERVE_MAX_BAD_PACKET_BYTES", "4096")
    limits = GatewaySettings().media_limits
    assert (limits.max_bad_packets, limits.max_bad_packet_bytes) == (3, 4096)
    assert GatewaySettings(max_bad_packets=0).media_limits.max_bad_packets == 0  # strict
