"""POST /classify on the embedded backend: routes and answers for real encoded clips."""

from __future__ import annotations

import numpy as np
import pytest
from gateway_helpers import FAMILY, NUM_LABELS, assert_error, post_clip, scores

from avserve.media import decode_audio
from avserve.repository import load_model_spec

HEADS = {"audio", "video", "fusion", "global"}


def test_audio_video_clip_is_answered_by_the_av_model(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        response = post_clip(client, clips.av, top_k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": f"{FAMILY}_av", "version": "1", "family": FAMILY, "backend": "embedded", "unimodal": None}
    assert body["modalities"] == {"present": ["audio", "video"], "used": ["audio", "video"], "zero_filled": [], "degraded": False}
    assert len(body["predictions"]) == 3
    assert [p["score"] for p in body["predictions"]] == sorted((p["score"] for p in body["predictions"]), reverse=True)
    assert set(body["heads"]) == HEADS and all(len(top) == 3 for top in body["heads"].values())
    assert set(body["timings_ms"]) == {"upload", "probe", "decode", "inference", "total"}
    assert body["timings_ms"]["total"] >= body["timings_ms"]["decode"] + body["timings_ms"]["inference"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["windows"] == [{"start": 0.0, "duration": 2.0}]
    assert body["media"]["audio"]["codec"] == "aac" and body["media"]["video"]["width"] == 64


def test_audio_only_answer_equals_the_av_models_audio_head(embedded_gateway, clips):
    """Zorro's modality purity, end to end: the audio-only graph on an audio-only file gives
    exactly the audio head of the audio+video graph on the same audio with video present."""
    with embedded_gateway.client() as client:
        full = post_clip(client, clips.av, top_k=NUM_LABELS).json()
        audio_only = post_clip(client, clips.audio, top_k=NUM_LABELS).json()
    assert audio_only["model"]["name"] == f"{FAMILY}_audio"
    assert audio_only["modalities"]["present"] == ["audio"] and audio_only["modalities"]["used"] == ["audio"]
    assert set(audio_only["heads"]) == {"audio"}
    expected = scores(full["heads"]["audio"])
    got = scores(audio_only["predictions"])
    assert got.keys() == expected.keys() and len(got) == NUM_LABELS
    # Bit for bit (docs/models.md): both files decode to the same samples, each request runs
    # alone (batch 1) with the same session options, and the scores go through the same softmax.
    assert got == expected
    # ... and it is not simply the fused answer of the full model.
    assert scores(full["predictions"]) != pytest.approx(got, abs=1e-5)


def test_video_only_answer_equals_the_av_models_video_head(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        full = post_clip(client, clips.av, top_k=NUM_LABELS).json()
        video_only = post_clip(client, clips.video, top_k=NUM_LABELS).json()
    assert video_only["model"]["name"] == f"{FAMILY}_video"
    assert video_only["modalities"]["present"] == ["video"]
    expected = scores(full["heads"]["video"])
    got = scores(video_only["predictions"])
    assert len(got) == NUM_LABELS
    assert got == expected  # bit for bit, as for audio


@pytest.mark.parametrize(("modality", "model"), [("audio", "audio"), ("video", "video"), ("av", "av")])
def test_modality_forces_the_route(embedded_gateway, clips, modality, model):
    with embedded_gateway.client() as client:
        forced = post_clip(client, clips.av, modality=modality, top_k=NUM_LABELS).json()
        full = post_clip(client, clips.av, top_k=NUM_LABELS).json()
    assert forced["model"]["name"] == f"{FAMILY}_{model}"
    assert forced["modalities"]["present"] == ["audio", "video"]
    assert forced["modalities"]["used"] == (["audio", "video"] if model == "av" else [model])
    if model != "av":
        assert scores(forced["predictions"]) == scores(full["heads"][model])  # bit for bit


def test_forcing_a_modality_the_upload_lacks_is_a_422(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        assert_error(post_clip(client, clips.audio, modality="video"), 422, "modality_not_present")
        assert_error(post_clip(client, clips.video, modality="av"), 422, "modality_not_present")


def test_raw_body_upload_with_a_media_content_type(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        raw = client.post("/classify", content=clips.av.read_bytes(), headers={"content-type": "video/mp4"})
        multipart = post_clip(client, clips.av)
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"] == multipart.json()["predictions"]


def test_realistic_uploads_of_every_recipe_route_by_their_streams(embedded_gateway, synthetic_uploads):
    """mp4/webm/mkv/avi with two tracks, wav/flac/mp3/m4a/ogg audio-only, mp4/webm video-only."""
    expected_model = {"audio+video": "av", "audio": "audio", "video": "video"}
    suffixes = set()
    with embedded_gateway.client() as client:
        for path, modalities in synthetic_uploads:
            response = post_clip(client, path, top_k=1)
            assert response.status_code == 200, (path.name, response.text)
            body = response.json()
            assert body["model"]["name"] == f"{FAMILY}_{expected_model[modalities]}", path.name
            assert "+".join(body["modalities"]["present"]) == modalities.replace("audio+video", "audio+video")
            suffixes.add(path.suffix)
    assert suffixes >= {".mp4", ".webm", ".mkv", ".avi", ".wav", ".flac", ".mp3", ".m4a", ".ogg"}


def test_long_clip_windows_are_scored_and_averaged(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        whole = post_clip(client, clips.long_av, duration=6, top_k=NUM_LABELS).json()
        parts = [post_clip(client, clips.long_av, start=s, duration=2, top_k=NUM_LABELS).json() for s in (0, 2, 4)]
    assert whole["windows"] == [{"start": s, "duration": 2.0} for s in (0.0, 2.0, 4.0)]
    for key in ("predictions", "heads"):
        expected = [scores(p["predictions"] if key == "predictions" else p["heads"]["audio"]) for p in parts]
        got = scores(whole["predictions"] if key == "predictions" else whole["heads"]["audio"])
        # The papers' multi-view rule (avserve/views.py): the softmax of the windows' mean logits.
        # A window's log-probabilities are its logits less a constant, which the softmax cancels.
        labels = sorted(got)
        mean_log_probability = np.mean([[np.log(e[label]) for label in labels] for e in expected], axis=0)
        softmax = np.exp(mean_log_probability) / np.exp(mean_log_probability).sum()
        assert got == pytest.approx(dict(zip(labels, softmax)), rel=0, abs=1e-9)
        # Not the mean of the probabilities (this untrained model's are near-uniform, so the two
        # rules differ by about 1e-7, two orders above the float32 logits' rounding).
        assert max(abs(got[label] - np.mean([e[label] for e in expected])) for label in labels) > 2e-8
    # Windows differ (the tone steps up every second), so averaging is not a no-op.
    assert scores(parts[0]["predictions"]) != pytest.approx(scores(parts[2]["predictions"]), abs=1e-6)


def test_span_past_the_end_is_cut_at_the_clip_and_windows_are_bounded(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        body = post_clip(client, clips.long_av, start=3, duration=60).json()
        assert body["windows"] == [{"start": 3.0, "duration": 2.0}, {"start": 5.0, "duration": pytest.approx(1.0, abs=0.05)}]
        assert_error(post_clip(client, clips.long_av, start=7), 422, "invalid_window")
        assert len(post_clip(client, clips.long_av, duration=5).json()["windows"]) == 3


def test_missing_modality_zero_fill_answers_degraded(embedded_gateway, serving_repository, clips):
    with embedded_gateway.client() as client:
        response = post_clip(client, clips.audio, model="zorro_zero_fill", top_k=NUM_LABELS)
        audio_route = post_clip(client, clips.audio, top_k=NUM_LABELS).json()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "zorro_zero_fill_av"
    assert body["modalities"] == {"present": ["audio"], "used": ["audio"], "zero_filled": ["video"], "degraded": True}

    # The answer is the audio+video graph run by onnxruntime on the clip's audio, decoded as the
    # gateway decodes it, and all-zero video.
    import onnxruntime as ort

    model_dir = serving_repository / "zorro_zero_fill_av"
    spec = load_model_spec(model_dir)
    audio = decode_audio(clips.audio, sample_rate=spec.sample_rate, start=0.0, duration=spec.clip_seconds).samples
    assert audio.shape == (spec.clip_samples,)
    inputs = {
        "audio": audio[np.newaxis].astype(np.float32),
        "video": np.zeros((1, spec.num_frames, spec.image_size, spec.image_size, 3), np.uint8),
    }
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    expected = {name: softmax(values[0]) for name, values in zip(names, session.run(names, inputs), strict=True)}
    labels = spec.labels
    # The same graph, batch and session options as the gateway's: identical scores.
    assert scores(body["predictions"]) == dict(zip(labels, expected["logits"].tolist()))
    assert set(body["heads"]) == HEADS
    for head, top in body["heads"].items():
        assert scores(top) == dict(zip(labels, expected[f"head_{head}"].tolist())), head
    # Zero-filled video is not the audio route: the fused answer differs, the audio head (Zorro's
    # audio stream never sees video) does not.
    assert scores(body["predictions"]) != pytest.approx(scores(audio_route["predictions"]), abs=1e-5)
    assert scores(body["heads"]["audio"]) == scores(audio_route["predictions"])


def softmax(logits: np.ndarray) -> np.ndarray:
    """The gateway's softmax (float64), so equal logits give equal scores."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def test_missing_modality_reject_and_route_without_a_model_are_422(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        assert_error(post_clip(client, clips.video, model="zorro_reject"), 422, "modality_not_served")
        assert_error(post_clip(client, clips.audio, model="zorro_route"), 422, "no_route")
        # The audio+video model of those families still answers audio+video clips.
        assert post_clip(client, clips.av, model="zorro_reject").json()["model"]["name"] == "zorro_reject_av"


def test_unknown_family_is_a_404(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        assert_error(post_clip(client, clips.av, model="no_such_family"), 404, "unknown_model")


def test_top_k_is_capped_at_the_number_of_labels(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        body = post_clip(client, clips.av, top_k=1000).json()
    assert len(body["predictions"]) == NUM_LABELS
    assert sum(p["score"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-6)


def test_fast_sampling_is_a_per_request_choice_reported_in_the_answer(embedded_gateway, clips):
    """`sampling=fast` takes keyframes (clips.long_av has one every second): the answer says so,
    and how far the frames landed; `exact` stays the default and lands within a frame period."""
    with embedded_gateway.client() as client:
        exact = post_clip(client, clips.long_av)
        fast = post_clip(client, clips.long_av, sampling="fast")
        audio_only = post_clip(client, clips.audio, sampling="fast")
        bad = post_clip(client, clips.long_av, sampling="keyframes")
    assert exact.status_code == fast.status_code == audio_only.status_code == 200, (exact.text, fast.text)
    exact_video, fast_video = exact.json()["media"]["video"], fast.json()["media"]["video"]
    assert exact_video["sampling"] == "exact" and exact_video["max_frame_offset_ms"] < 100  # 10 fps
    assert fast_video["sampling"] == "fast" and fast_video["max_frame_offset_ms"] > exact_video["max_frame_offset_ms"]
    # Only the video input changed: the audio head is the same, the video head is not.
    assert scores(fast.json()["heads"]["audio"]) == scores(exact.json()["heads"]["audio"])
    assert scores(fast.json()["heads"]["video"]) != scores(exact.json()["heads"]["video"])
    assert audio_only.json()["media"]["video"] is None
    assert bad.status_code == 422


def test_fast_sampling_can_be_the_servers_default(gateway_factory, serving_repository, clips):
    gateway = gateway_factory(repository=serving_repository, default_model=FAMILY, frame_sampling="fast")
    with gateway.client() as client:
        default = post_clip(client, clips.long_av).json()
        exact = post_clip(client, clips.long_av, sampling="exact").json()
    assert default["media"]["video"]["sampling"] == "fast"
    assert exact["media"]["video"]["sampling"] == "exact"
