"""Upload-size clips: `avserve data synth --preset uploads` and the bench's groups of them (tiny sizes here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import pytest

ROOT = Path(__file__).resolve().parents[2]


def synth(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avserve.cli", "data", "synth", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_data_synth_uploads_writes_h264_aac_clips_with_the_gop_asked_for_and_keeps_them(tmp_path):
    out = tmp_path / "uploads"
    result = synth("--out", str(out), "--preset", "uploads", "--upload", "72p:2:0.5", "--upload", "144p:3:2")
    assert result.returncode == 0, result.stderr
    assert "upload clips" in result.stderr  # the progress bar
    manifest = json.loads((out / "uploads.json").read_text())["clips"]
    assert [(c["name"], c["width"], c["height"], c["seconds"], c["gop_seconds"]) for c in manifest] == [
        ("upload_72p_2s_gop0.5s", 128, 72, 2.0, 0.5), ("upload_144p_3s_gop2s", 256, 144, 3.0, 2.0)]
    for entry, keyframe_every in zip(manifest, (15, 60)):
        path = out / entry["path"]
        assert path.stat().st_size == entry["bytes"]
        with av.open(str(path)) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert (video.codec_context.name, video.codec_context.profile, audio.codec_context.name) == ("h264", "High", "aac")
            assert (video.width, video.height, video.average_rate) == (entry["width"], entry["height"], 30)
            assert (audio.sample_rate, audio.channels) == (48000, 2)
            frames = [packet for packet in container.demux(video) if packet.size]
        assert len(frames) == 30 * entry["seconds"]
        keyframes = sorted(round(packet.pts * packet.time_base * 30) for packet in frames if packet.is_keyframe)
        assert keyframes == list(range(0, len(frames), keyframe_every))
    assert sorted(p.name for p in out.iterdir()) == ["upload_144p_3s_gop2s.mp4", "upload_72p_2s_gop0.5s.mp4", "uploads.json"]

    written = (out / "upload_72p_2s_gop0.5s.mp4").stat().st_mtime_ns
    again = synth("--out", str(out), "--preset", "uploads", "--upload", "72p:2:0.5")
    assert again.returncode == 0, again.stderr
    assert (out / "upload_72p_2s_gop0.5s.mp4").stat().st_mtime_ns == written  # kept, not encoded again
    assert json.loads((out / "uploads.json").read_text())["clips"] == manifest[::-1]  # both still listed


def test_data_synth_uploads_refuses_a_bad_clip_spec(tmp_path):
    from avserve.media.synthetic import UploadClip

    result = synth("--out", str(tmp_path), "--preset", "uploads", "--upload", "720:10:2")
    assert result.returncode != 0
    assert "upload clip '720:10:2': expected HEIGHTp:SECONDS:GOP_SECONDS" in result.stdout + result.stderr
    assert not list(tmp_path.iterdir())
    for spec in ("73p:1:1", "72p:1:2", "72p:0:1"):  # odd height, GOP longer than the clip, no length
        with pytest.raises(ValueError, match=f"upload clip '{spec}'"):
            UploadClip.parse(spec)


def test_bench_groups_upload_clips_by_size_and_gop(tmp_path):
    from avserve.media.synthetic import UploadClip
    from loadtests.clips import make_upload_clips

    specs = tuple(UploadClip.parse(s) for s in ("72p:1:0.5", "72p:2:2", "144p:1:1", "144p:2:2"))
    groups = make_upload_clips(tmp_path, specs, progress=False)
    assert {group: [c.name for c in clips] for group, clips in groups.items()} == {
        "72p short GOP": ["upload_72p_1s_gop0.5s"], "72p long GOP": ["upload_72p_2s_gop2s"],
        "144p short GOP": ["upload_144p_1s_gop1s"], "144p long GOP": ["upload_144p_2s_gop2s"]}
    assert all(c.path.is_file() and c.route == "av" for clips in groups.values() for c in clips)
