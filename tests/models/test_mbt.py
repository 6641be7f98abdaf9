"""MBT invariants (digest shared/papers/zorro-mbt.md, B7): where information may flow, the
bottleneck average, B = 0 as late fusion, the shared classifier, mixed batches vs unimodal
calls, and the paper preset's parameter count and compute against independent formulas."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from training.models import MBT, create_model
from training.models.mbt import stream_average

AV = ("audio", "video")


def tokens_for(model, audio, video):
    return {"video": model.embed("video", model.video_patches(video)), "audio": model.embed("audio", model.audio_patches(audio))}


@pytest.fixture
def inputs(make_audio, make_video):
    """(config -> audio, video, other audio, other video), batch 3."""

    def make(config):
        return (
            make_audio(config, 3, seed=1),
            make_video(config, 3, seed=2),
            make_audio(config, 3, seed=3),
            make_video(config, 3, seed=4),
        )

    return make


@pytest.mark.parametrize("name", ["mbt_tiny", "mbt_tiny_cross"])
@torch.no_grad()
def test_each_stream_is_independent_of_the_other_modality_before_the_fusion_layer(tiny_model, inputs, name):
    model = tiny_model(name)
    audio, video, audio2, video2 = inputs(model.config)
    fusion_layer = model.config.fusion_layer
    assert 0 < fusion_layer < model.config.depth
    before = model.encode(tokens_for(model, audio, video), num_layers=fusion_layer)
    other_audio = model.encode(tokens_for(model, audio2, video), num_layers=fusion_layer)
    other_video = model.encode(tokens_for(model, audio, video2), num_layers=fusion_layer)
    assert torch.equal(before["video"], other_audio["video"])
    assert torch.equal(before["audio"], other_video["audio"])
    # ...and fusion is real: after all layers the CLS of each stream depends on the other modality
    after, after_other_audio = model.forward_features(audio=audio, video=video), model.forward_features(audio=audio2, video=video)
    assert not torch.allclose(after["video"], after_other_audio["video"], atol=1e-6)


def test_pre_fusion_gradients_across_modalities_are_exactly_zero(tiny_model, inputs):
    model = tiny_model("mbt_tiny")
    audio, video, _, _ = inputs(model.config)
    audio.requires_grad_(True)
    encoded = model.encode(tokens_for(model, audio, video.float()), num_layers=model.config.fusion_layer)
    # the audio term (times 0) only puts the audio input in the graph, so its gradient exists
    (encoded["video"].sum() + 0.0 * encoded["audio"].sum()).backward()
    assert audio.grad is not None and torch.count_nonzero(audio.grad) == 0


@torch.no_grad()
def test_late_fusion_streams_never_see_the_other_modality(tiny_model, inputs):
    model = tiny_model("mbt_tiny_late")
    audio, video, audio2, _ = inputs(model.config)
    assert not hasattr(model, "bottleneck")
    a = model.forward_features(audio=audio, video=video)
    b = model.forward_features(audio=audio2, video=video)
    assert torch.equal(a["video"], b["video"])


@torch.no_grad()
def test_one_fused_layer_exchanges_nothing_because_it_reads_the_learned_bottleneck(tiny_model, inputs):
    """Module docstring: the first fused layer's streams read the initial bottleneck tokens, so
    information first crosses at L_f + 1; with L_f = depth - 1 the CLS outputs stay unimodal."""
    model = tiny_model("mbt_tiny", fusion_layer=3)
    audio, video, audio2, _ = inputs(model.config)
    a = model.forward_features(audio=audio, video=video)
    b = model.forward_features(audio=audio2, video=video)
    assert torch.equal(a["video"], b["video"])


@torch.no_grad()
def test_zero_bottleneck_tokens_equal_late_fusion_exactly(tiny_model, inputs):
    late = tiny_model("mbt_tiny_late")
    no_bottleneck = tiny_model("mbt_tiny", n_bottlenecks=0)
    assert no_bottleneck.bottleneck.shape[1] == 0
    missing, unexpected = no_bottleneck.load_state_dict(late.state_dict(), strict=False)
    assert missing == ["bottleneck"] and unexpected == []
    audio, video, _, _ = inputs(late.config)
    expected = late(audio=audio, video=video)
    got = no_bottleneck(audio=audio, video=video)
    assert torch.equal(got["logits"], expected["logits"])


@pytest.mark.parametrize("fusion_layer", [0, 2])
@torch.no_grad()
def test_bottleneck_update_is_the_average_of_the_streams_copies(tiny_model, inputs, fusion_layer):
    model = tiny_model("mbt_tiny", fusion_layer=fusion_layer)
    audio, video, audio2, _ = inputs(model.config)
    index = fusion_layer  # the first fused layer; the bottleneck gets a non-trivial value below
    tokens = model.encode(tokens_for(model, audio, video), num_layers=index)
    bottleneck = model.bottleneck.expand(3, -1, -1) + 0.1 * torch.randn(3, model.config.n_bottlenecks, model.config.dim)
    new_tokens, new_bottleneck, copies = model.bottleneck_layer(index, tokens, bottleneck)

    # Eq. 8 recomputed by hand: each stream's own layer over [its tokens || bottleneck]
    for stream in AV:
        n = tokens[stream].shape[1]
        out = model.encoders[stream][index](torch.cat([tokens[stream], bottleneck], dim=1))
        assert torch.equal(out[:, :n], new_tokens[stream])
        assert torch.equal(out[:, n:], copies[stream])
    # Eq. 9: the average, elementwise; and the copies really differ (else the test is vacuous)
    assert torch.equal(new_bottleneck, 0.5 * (copies["audio"] + copies["video"]))
    assert not torch.allclose(copies["audio"], copies["video"])

    # Only the bottleneck carries information: other audio tokens leave the video stream's
    # layer output unchanged (with the bottleneck held fixed) and change the new bottleneck.
    other = dict(tokens, audio=model.encode(tokens_for(model, audio2, video), num_layers=index)["audio"])
    other_tokens, other_bottleneck, _ = model.bottleneck_layer(index, other, bottleneck)
    assert torch.equal(other_tokens["video"], new_tokens["video"])
    assert not torch.equal(other_bottleneck, new_bottleneck)


@torch.no_grad()
def test_shared_classifier_averages_the_two_cls_logits(tiny_model, inputs):
    model = tiny_model("mbt_tiny")
    audio, video, _, _ = inputs(model.config)
    features = model.forward_features(audio=audio, video=video)
    assert set(features) == set(AV)
    w, b = model.classifier.weight, model.classifier.bias
    expected = ((features["audio"] @ w.T + b) + (features["video"] @ w.T + b)) / 2
    out = model(audio=audio, video=video)
    torch.testing.assert_close(out["cls"], expected, rtol=0, atol=1e-6)
    assert torch.equal(out["logits"], out["cls"])  # one head: the answer is that head, no arithmetic


@pytest.mark.parametrize("name", ["mbt_tiny", "mbt_tiny_early", "mbt_tiny_late"])
@torch.no_grad()
def test_mixed_batch_gives_each_clip_exactly_its_unimodal_answer(tiny_model, inputs, name):
    """A clip flagged audio-only in a mixed batch (training, evaluation) gets bit for bit what the
    exported audio-only graph computes; audio+video clips get the audio+video answer."""
    model = tiny_model(name)
    audio, video, _, _ = inputs(model.config)
    present = {"audio": torch.tensor([True, True, False]), "video": torch.tensor([True, False, True])}
    mixed = model(audio=audio, video=video, present=present)["logits"]
    assert torch.equal(mixed[0], model(audio=audio, video=video)["logits"][0])
    assert torch.equal(mixed[1], model(audio=audio)["logits"][1])
    assert torch.equal(mixed[2], model(video=video)["logits"][2])


@torch.no_grad()
def test_mixed_batch_with_cross_attention_matches_unimodal_within_float_noise(tiny_model, inputs):
    """Masked keys get exactly zero weight, but the softmax sums run over a different number of
    terms, so only float-noise equality holds here."""
    model = tiny_model("mbt_tiny_cross")
    audio, video, _, _ = inputs(model.config)
    present = {"audio": torch.tensor([True, True, False]), "video": torch.tensor([True, False, True])}
    mixed = model(audio=audio, video=video, present=present)["logits"]
    torch.testing.assert_close(mixed[0], model(audio=audio, video=video)["logits"][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[1], model(audio=audio)["logits"][1], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[2], model(video=video)["logits"][2], rtol=0, atol=1e-5)


def test_absent_stream_gets_no_gradient_in_a_mixed_batch(tiny_model, inputs):
    model = tiny_model("mbt_tiny")
    audio, video, _, _ = inputs(model.config)
    video = video.float().requires_grad_(True)
    present = {"audio": torch.tensor([True, True, True]), "video": torch.tensor([False, False, False])}
    model(audio=audio, video=video, present=present)["logits"].sum().backward()
    assert torch.count_nonzero(video.grad) == 0


def test_stream_average_handles_one_stream_and_empty_clips():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert stream_average({"audio": a}) is a
    present = {"audio": torch.tensor([True, False, False]), "video": torch.tensor([True, True, False])}
    out = stream_average({"audio": a, "video": b}, present)
    assert torch.equal(out[0], (a[0] + b[0]) / 2) and torch.equal(out[1], b[1])
    assert torch.equal(out[2], torch.zeros(4))  # nothing present: zeros, not NaN


def test_bottleneck_tokens_are_initialised_like_the_paper():
    """Sec. 4.2: Gaussian, mean 0, std 0.02 (checked on a wide bottleneck to have enough values)."""
    torch.manual_seed(0)
    model = create_model("mbt_tiny", n_bottlenecks=64, dim=256, num_heads=4)
    values = model.bottleneck.detach().flatten()
    assert abs(values.mean().item()) < 0.002 and 0.018 < values.std().item() < 0.022


def test_streams_have_their_own_weights_and_drop_path_rises_to_the_configured_rate():
    model = create_model("mbt_tiny")
    audio_layer, video_layer = model.encoders["audio"][0], model.encoders["video"][0]
    assert audio_layer.attn.qkv.weight.data_ptr() != video_layer.attn.qkv.weight.data_ptr()
    rates = [block.drop_path.p for block in model.encoders["audio"]]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(model.config.drop_path) and rates == sorted(rates)


def test_config_rejects_impossible_fusion_settings():
    with pytest.raises(ValueError, match="fusion_layer"):
        create_model("mbt_tiny", fusion_layer=5)
    with pytest.raises(ValueError, match="fusion"):
        create_model("mbt_tiny", fusion="concat")
    with pytest.raises(ValueError, match="n_bottlenecks"):
        create_model("mbt_tiny", n_bottlenecks=-1)


# --------------------------------------------------------------------------------------
# Paper preset: parameter count, token counts and compute (meta device only)
# --------------------------------------------------------------------------------------


def vit_b_layer_params(d: int = 768, mlp: int = 3072) -> int:
    """Digest C2: q/k/v/out projections + the two MLP linears (with biases) + two LayerNorms."""
    attention = 4 * (d * d + d)
    mlp_params = (d * mlp + mlp) + (mlp * d + d)
    return attention + mlp_params + 2 * 2 * d


def test_paper_preset_parameter_count_equals_the_layer_formula():
    """MBT reports no count; digest C2 estimates ~172-173M for the AudioSet model (t = 8 s)."""
    with torch.device("meta"):
        model = create_model("mbt_vit_b16")
    count = sum(p.numel() for p in model.parameters())
    d, classes, patch = 768, 527, 16
    assert vit_b_layer_params() == 7_087_872  # digest C2
    formula = (
        2 * 12 * vit_b_layer_params()  # two ViT-B encoders, own weights (Sec. 4.3)
        + (patch * patch * 3 * d + d) + (patch * patch * 1 * d + d)  # E_rgb, E_spec
        + (1568 + 1) * d + (400 + 1) * d  # learned positions incl. CLS (Eq. 1): 8x14x14 + 1, 50x8 + 1
        + 2 * d  # the two CLS tokens
        + 2 * 2 * d  # final LayerNorm per stream
        + 4 * d  # B = 4 bottleneck tokens
        + d * classes + classes  # the shared linear classifier
    )
    print(f"mbt_vit_b16: {count:,} parameters; layer formula {formula:,}")
    assert count == formula == 172_822_799


def test_paper_preset_token_counts():
    with torch.device("meta"):
        model = create_model("mbt_vit_b16")
    cfg = model.config
    assert isinstance(model, MBT)
    assert cfg.clip_samples == 128_000 and cfg.spectrogram_frames == 800  # 128 x 100t at t = 8 s
    assert cfg.num_audio_patches == 400 and cfg.num_video_patches == 1568
    assert model.pos_embed["audio"].embedding.shape[1] == 401 and model.pos_embed["video"].embedding.shape[1] == 1569
    assert (cfg.fusion_layer, cfg.n_bottlenecks, cfg.num_fused_layers) == (8, 4, 4)
    with torch.device("meta"):
        out = model(audio=torch.empty(2, cfg.clip_samples), video=torch.empty(2, 8, 224, 224, 3))
    assert out["logits"].shape == (2, 527)


def forward_gmacs(**overrides) -> float:
    with torch.device("meta"):
        model = create_model("mbt_vit_b16", **overrides).eval()
        audio, video = torch.empty(1, model.config.clip_samples), torch.empty(1, 8, 224, 224, 3)
        with FlopCounterMode(display=False) as counter:
            model(audio=audio, video=video)
    return counter.get_total_flops() / 2e9


def test_bottlenecks_cost_almost_nothing_over_late_fusion_and_cross_attention_costs_more():
    """Digest B6/B7.9: bottleneck fusion at any L_f is within ~1% of late fusion; vanilla
    cross-attention grows with the number of fused layers (Sec. 4.3.1, Fig. 3 right)."""
    late = forward_gmacs(fusion_layer=12)
    mid, early = forward_gmacs(), forward_gmacs(fusion_layer=0)
    cross_mid, cross_early = forward_gmacs(fusion="cross_attention", fusion_layer=10), forward_gmacs(fusion="cross_attention", fusion_layer=0)
    print(f"GMACs: late {late:.1f}, bottleneck L_f=8 {mid:.1f}, L_f=0 {early:.1f}, cross L_f=10 {cross_mid:.1f}, L_f=0 {cross_early:.1f}")
    assert late < mid < early < 1.01 * late
    assert late < cross_mid < cross_early
    assert cross_early > 1.2 * early
