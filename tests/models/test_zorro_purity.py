"""Zorro's central claim, checked exactly: the audio and video heads are modality-pure.

Eval mode, float32, tiny presets. "Pure" means bit-identical outputs (torch.equal) when the
other modality changes, an exactly-zero gradient w.r.t. the other modality, and a unimodal
forward that equals the full model's head bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from training.models import AUDIO_ONLY, AUDIO_VIDEO, VIDEO_ONLY

PURE_VARIANTS = [
    pytest.param("zorro_tiny", {}, id="shared"),
    pytest.param("zorro_tiny_separate", {}, id="separate"),
    pytest.param("zorro_tiny", {"attention_impl": "dense"}, id="shared-dense-mask"),
    pytest.param("zorro_tiny_separate", {"attention_impl": "dense"}, id="separate-dense-mask"),
    pytest.param("zorro_tiny", {"fusion_start_layer": 2}, id="fusion-from-layer-2"),
]


def grad_wrt(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """d(sum output)/d(inputs), zeros if the graph does not even reach `inputs`."""
    (grad,) = torch.autograd.grad(output.sum(), inputs, retain_graph=True, allow_unused=True, materialize_grads=True)
    return grad


@pytest.mark.parametrize("name, overrides", PURE_VARIANTS)
def test_audio_head_ignores_video_and_video_head_ignores_audio(tiny_model, make_audio, make_video, name, overrides):
    model = tiny_model(name, **overrides)
    cfg = model.config
    audio_1, audio_2 = make_audio(cfg, 2, seed=1), make_audio(cfg, 2, seed=2)
    video_1, video_2 = make_video(cfg, 2, seed=3), make_video(cfg, 2, seed=4)
    with torch.no_grad():
        base = model(audio=audio_1, video=video_1)
        other_video = model(audio=audio_1, video=video_2)
        other_audio = model(audio=audio_2, video=video_1)
    assert torch.equal(base["audio"], other_video["audio"])
    assert torch.equal(base["video"], other_audio["video"])
    # ... while the multimodal heads really do read both modalities.
    for head in ("fusion", "global"):
        assert not torch.allclose(base[head], other_video[head]), head
        assert not torch.allclose(base[head], other_audio[head]), head
    assert not torch.equal(base["audio"], other_audio["audio"])
    assert not torch.equal(base["video"], other_video["video"])


@pytest.mark.parametrize("name, overrides", PURE_VARIANTS)
def test_cross_modal_gradients_are_exactly_zero(tiny_model, make_audio, make_video, name, overrides):
    model = tiny_model(name, **overrides)
    cfg = model.config
    audio = make_audio(cfg, 2, seed=1).requires_grad_(True)
    video = make_video(cfg, 2, seed=3, dtype=torch.float32).requires_grad_(True)  # float 0..255, as mixup feeds it
    out = model(audio=audio, video=video)
    assert torch.count_nonzero(grad_wrt(out["audio"], video)) == 0
    assert torch.count_nonzero(grad_wrt(out["video"], audio)) == 0
    assert torch.count_nonzero(grad_wrt(out["audio"], audio)) > 0
    assert torch.count_nonzero(grad_wrt(out["video"], video)) > 0
    for head in ("fusion", "global"):
        assert torch.count_nonzero(grad_wrt(out[head], audio)) > 0, head
        assert torch.count_nonzero(grad_wrt(out[head], video)) > 0, head


@pytest.mark.parametrize("name", ["zorro_tiny", "zorro_tiny_separate"])
def test_unimodal_forward_is_bit_identical_to_the_full_models_head(tiny_model, make_audio, make_video, name):
    """Default "grouped" attention: the audio stream runs the same ops on the same tensors with or
    without video, so this is exact (no tolerance)."""
    model = tiny_model(name)
    cfg = model.config
    audio, video = make_audio(cfg, 3, seed=5), make_video(cfg, 3, seed=6)
    with torch.no_grad():
        full = model(audio=audio, video=video)
        audio_only = model(audio=audio)
        video_only = model(video=video)
    assert set(audio_only) == {"audio", "logits"} and set(video_only) == {"video", "logits"}
    assert torch.equal(audio_only["audio"], full["audio"])
    assert torch.equal(video_only["video"], full["video"])
    assert torch.equal(audio_only["logits"], full["audio"])  # one head: the "mean" is that head
    torch.testing.assert_close(full["logits"], torch.stack([full[h] for h in model.head_names]).mean(0))


def test_dense_mask_unimodal_forward_matches_within_float_noise(tiny_model, make_audio, make_video):
    """With one dense masked attention over the whole sequence, the audio rows' softmax and
    weighted sums run over a longer key axis (masked keys contribute exact zeros, but the
    vectorised reductions group the terms differently), so a shorter unimodal sequence can
    differ in the last bits: bounded at 1e-6, not bit-exact. The default impl is exact."""
    model = tiny_model("zorro_tiny", attention_impl="dense")
    cfg = model.config
    audio, video = make_audio(cfg, 3, seed=5), make_video(cfg, 3, seed=6)
    with torch.no_grad():
        full = model(audio=audio, video=video)
        diff_audio = (model(audio=audio)["audio"] - full["audio"]).abs().max()
        diff_video = (model(video=video)["video"] - full["video"]).abs().max()
    print(f"dense-mask unimodal vs full: audio {diff_audio:.1e}, video {diff_video:.1e}")
    assert diff_audio <= 1e-6 and diff_video <= 1e-6


def test_two_streams_ablation_is_pure_and_has_two_heads(tiny_model, make_audio, make_video):
    model = tiny_model("zorro_tiny", fusion_mask="two_streams")
    cfg = model.config
    assert model.head_names == ("audio", "video")
    assert not hasattr(model, "fusion_tokens")
    audio, video = make_audio(cfg, 2, seed=1), make_video(cfg, 2, seed=3)
    with torch.no_grad():
        full = model(audio=audio, video=video)
        assert torch.equal(full["audio"], model(audio=audio, video=make_video(cfg, 2, seed=9))["audio"])
        assert torch.equal(full["audio"], model(audio=audio)["audio"])
        assert torch.equal(full["video"], model(video=video)["video"])


@pytest.mark.parametrize("fusion_mask", ["input_level", "bottleneck"])
def test_leaky_ablations_are_not_pure_and_not_servable_unimodally(tiny_model, make_audio, make_video, fusion_mask):
    model = tiny_model("zorro_tiny", fusion_mask=fusion_mask)
    cfg = model.config
    assert model.servable_modalities == (AUDIO_VIDEO,)
    audio = make_audio(cfg, 2, seed=1).requires_grad_(True)
    video = make_video(cfg, 2, seed=3, dtype=torch.float32).requires_grad_(True)
    out = model(audio=audio, video=video)
    with torch.no_grad():
        other_video = model(audio=audio, video=make_video(cfg, 2, seed=4))
    assert not torch.allclose(out["audio"], other_video["audio"])
    assert torch.count_nonzero(grad_wrt(out["audio"], video)) > 0
    assert torch.count_nonzero(grad_wrt(out["video"], audio)) > 0
    with pytest.raises(ValueError, match="cannot run"):
        model(audio=audio)
    with pytest.raises(ValueError, match="cannot run"):
        model.heads_for(AUDIO_ONLY)


def test_interface_of_the_full_zorro(tiny_model, make_audio, make_video):
    model = tiny_model("zorro_tiny")
    assert model.head_names == ("audio", "video", "fusion", "global")
    assert set(model.servable_modalities) == {AUDIO_VIDEO, AUDIO_ONLY, VIDEO_ONLY}
    assert model.heads_for(AUDIO_ONLY) == ("audio",)
    assert model.heads_for(VIDEO_ONLY) == ("video",)
    assert model.heads_for(AUDIO_VIDEO) == model.head_names
    assert model.feature_dim == model.config.dim
    cfg = model.config
    features = model.forward_features(audio=make_audio(cfg, 2, seed=1), video=make_video(cfg, 2, seed=2))
    assert {k: tuple(v.shape) for k, v in features.items()} == {h: (2, cfg.dim) for h in model.head_names}


def test_bad_inputs_are_rejected_with_clear_errors(tiny_model, make_audio, make_video):
    model = tiny_model("zorro_tiny")
    cfg = model.config
    with pytest.raises(ValueError, match="cannot run on inputs \\[\\]"):
        model()
    with pytest.raises(ValueError, match=f"audio must be \\[B, {cfg.clip_samples}\\]"):
        model(audio=torch.zeros(2, cfg.clip_samples - 1))
    with pytest.raises(ValueError, match="video must be"):
        model(video=torch.zeros(2, cfg.num_frames, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(audio=make_audio(cfg, 2, seed=1), video=make_video(cfg, 3, seed=1))


def test_uint8_and_float_video_give_identical_outputs(tiny_model, make_audio, make_video):
    model = tiny_model("zorro_tiny")
    cfg = model.config
    audio, video = make_audio(cfg, 2, seed=1), make_video(cfg, 2, seed=2)
    with torch.no_grad():
        as_uint8 = model(audio=audio, video=video)
        as_float = model(audio=audio, video=video.float())
    for key in as_uint8:
        assert torch.equal(as_uint8[key], as_float[key]), key


def test_audio_augmentation_only_in_training_mode(tiny_model, make_audio, make_video):
    model = tiny_model("zorro_tiny")
    audio = make_audio(model.config, 4, seed=1)
    clean = model.audio_spectrogram(audio)
    assert torch.equal(model.audio_spectrogram(audio), clean)  # eval: deterministic, no augmentation
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model.audio_spectrogram(audio), clean)
