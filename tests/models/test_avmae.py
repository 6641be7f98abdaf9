"""AV-MAE encoder (training/models/avmae.py) and the tubelet / time-shift parts it brought
(layers.py, base.py, mbt.py): the digest's parameter and token counts (shared/papers/
pemt-vatt-avmae.md C.1.1, C.1.3, D.3), what masking saves in encoder compute, where each
encoder fusion lets the modalities meet, tied layers, tubelets, the random circular time shift,
and initialising an MBT from a pretrained AV-MAE by name. Paper sizes on the meta device only;
the ONNX export of every tiny preset is tests/models/test_all_models.py's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from training.models import LOGITS_KEY, create_model
from training.models.avmae import ENCODER_FUSIONS, AVMAE
from training.models.flops import dense_and_attention_flops
from training.models.layers import (
    PatchEmbed2d,
    RandomTimeShift,
    TubeletEmbed,
    patchify,
    patchify_tubelets,
    unpatchify_tubelets,
)
from training.objectives.masked import random_keep

TINY = {"mid": "avmae_tiny", "separate": "avmae_tiny_separate", "early": "avmae_tiny_early", "shared": "avmae_tiny_shared"}
PAPER_B = {f: f"avmae_vit_b16_{f}" for f in ENCODER_FUSIONS}


def build_on_meta(name: str, **overrides) -> AVMAE:
    with torch.device("meta"):
        return create_model(name, **overrides)


def encoder_stack_parameters(model) -> int:
    """Every `encoders.*` and `final_norm.*` parameter, each counted once (as parameters() does)."""
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(("encoders.", "final_norm.")))


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- parameter and token counts (meta device) -------------------------------------------------

# The digest's computed values (not the paper's: it gives none): encoder stacks C.1.3 and D.3.6
# (one ViT-B layer 7,087,872 + final LayerNorm 1,536; separate = two stacks; mid S=2 = 22 distinct
# layers and one final LayerNorm), tokenisers C.1.3, token counts C.1.1 / D.3.1.
ENCODER_STACKS = [
    ("avmae_vit_b16_early", {}, 85_056_000),
    ("avmae_vit_b16_shared", {}, 85_056_000),
    ("avmae_vit_b16_separate", {}, 170_112_000),
    ("avmae_vit_b16_mid", {}, 155_934_720),
    ("avmae_vit_l16_mid", {"fusion": "early"}, 302_311_424),  # one ViT-L stack
]


@pytest.mark.parametrize("name, overrides, expected", ENCODER_STACKS)
def test_encoder_stack_parameter_counts_are_the_digests(name, overrides, expected):
    model = build_on_meta(name, **overrides)
    assert all(p.is_meta for p in model.parameters())
    assert encoder_stack_parameters(model) == expected
    # de-duplicated: the state dict names a tied layer up to three times, parameters() once
    state = model.state_dict()
    named = sum(v.numel() for k, v in state.items() if k.startswith(("encoders.", "final_norm.")))
    assert (named > expected) == (model.config.fusion != "separate")


@pytest.mark.parametrize(
    "name, tubelet, audio_patch", [("avmae_vit_b16_mid", 1_180_416, 197_376), ("avmae_vit_l16_mid", 1_573_888, 263_168)]
)
def test_tokenisers_and_token_counts_at_paper_size(name, tubelet, audio_patch):
    model = build_on_meta(name)
    cfg = model.config
    assert count(model.patch_embed["video"]) == tubelet  # 2*16*16*3 = 1536 -> d
    assert count(model.patch_embed["audio"]) == audio_patch  # 16*16 = 256 -> d
    assert model.token_counts == {"audio": 400, "video": 1568}
    assert model.token_grids == {"audio": (50, 8), "video": (8, 14, 14)}
    assert model.patch_dims == {"audio": 256, "video": 1536}
    with torch.device("meta"):
        tokens = model.tokenize(
            audio=torch.empty(2, cfg.clip_samples),
            video=torch.empty(2, cfg.num_frames, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8),
        )
    assert {m: tuple(x.shape) for m, x in tokens.items()} == {"audio": (2, 400, cfg.dim), "video": (2, 1568, cfg.dim)}


@pytest.mark.parametrize("model", [*TINY.values(), "avmae_vit_b16_mid"])
def test_layers_are_private_tied_or_joint_as_the_fusion_says(model):
    """Mid: depth - S private layers per modality, then S joint ones (one module under both names
    and encoders.shared.<i>); shared and early: every layer one module; separate: none."""
    model = build_on_meta(model)
    cfg = model.config
    audio, video = model.encoders["audio"], model.encoders["video"]
    tied = [i for i in range(cfg.depth) if audio[i] is video[i]]
    expected = {"separate": [], "mid": list(range(cfg.depth - cfg.joint_layers, cfg.depth))}.get(cfg.fusion, list(range(cfg.depth)))
    assert tied == expected
    if cfg.fusion == "mid":
        assert len(tied) == cfg.joint_layers == 2 and (cfg.depth, cfg.first_joint_layer) in ((12, 10), (4, 2))  # ViT-B: 10 + 2
    shared = model.encoders["shared"] if "shared" in model.encoders else {}
    assert sorted(map(int, shared)) == tied
    assert all(shared[str(i)] is audio[i] for i in tied)
    distinct = {id(layer) for stream in (audio, video) for layer in stream}
    assert len(distinct) == 2 * cfg.depth - len(tied)
    # a parameter's name says who owns it: the tied ones are only ever encoders.shared.*
    for name, _ in model.named_parameters():
        if name.startswith("encoders."):
            _, owner, index = name.split(".")[:3]
            assert (owner == "shared") == (int(index) in tied), name


# ---- masking cost (meta device) -----------------------------------------------------------------


def expected_encoder_flops(cfg, tokens: dict[str, int]) -> tuple[int, int]:
    """(dense, attention) FLOPs of the encoder over `tokens` (CLS included), at 2 per MAC: per token
    and layer qkv 6d^2 + out 2d^2 + MLP 16d^2 = 24d^2; per layer QK^T and AV 4 n^2 d over each
    attention's n tokens (each modality alone below the first joint layer, both together from it)."""
    d = cfg.dim
    dense = attention = 0
    for index in range(cfg.depth):
        dense += 24 * d * d * sum(tokens.values())
        if index < cfg.first_joint_layer:
            attention += sum(4 * n * n * d for n in tokens.values())
        else:
            attention += 4 * sum(tokens.values()) ** 2 * d
    return dense, attention


@pytest.mark.parametrize("fusion", ENCODER_FUSIONS)
def test_masked_encoder_costs_what_its_visible_tokens_predict(fusion):
    """90 % video / 50 % audio masking (Sec. 4.1): the encoder runs on 157 + 200 of 1568 + 400
    tokens (C.1.2; the masked count floored), each modality's CLS added. Dense layers cost exactly
    the token ratio; attention less; ViT-B mid in all well under a third of the unmasked cost."""
    model = build_on_meta(PAPER_B[fusion]).eval()
    cfg = model.config
    meta = torch.device("meta")
    tokens = {m: torch.empty(1, n, cfg.dim, device=meta) for m, n in model.token_counts.items()}
    ratios = {"audio": 0.5, "video": 0.9}
    keep = {m: random_keep(1, x.shape[1], ratios[m], meta) for m, x in tokens.items()}  # as the objective draws them
    visible = {m: x.gather(1, keep[m].unsqueeze(-1).expand(-1, -1, x.shape[-1])) for m, x in tokens.items()}
    assert {m: x.shape[1] for m, x in visible.items()} == {"audio": 200, "video": 157}

    full = dense_and_attention_flops(lambda: model.encode_tokens(tokens))
    masked = dense_and_attention_flops(lambda: model.encode_tokens(visible))
    assert full == expected_encoder_flops(cfg, {"audio": 401, "video": 1569})
    assert masked == expected_encoder_flops(cfg, {"audio": 201, "video": 158})
    # every layer runs on every visible token of both modalities: the dense ratio is the token ratio
    assert masked[0] / full[0] == pytest.approx((200 + 1 + 157 + 1) / (400 + 1 + 1568 + 1), rel=1e-12)
    assert masked[1] < masked[0] / full[0] * full[1]  # attention is quadratic: it saves more
    total = sum(masked) / sum(full)
    print(f"{fusion}: masked encoder {total:.3f}x of the unmasked one")
    if fusion == "mid":
        assert total < 0.35


# ---- encoder fusions: where the modalities meet ----------------------------------------------------


@pytest.fixture
def clips(make_audio, make_video):
    """(config -> audio, video, other video), batch 3."""

    def make(config):
        return make_audio(config, 3, seed=1), make_video(config, 3, seed=2), make_video(config, 3, seed=3)

    return make


@pytest.mark.parametrize("fusion", ENCODER_FUSIONS)
@torch.no_grad()
def test_audio_head_sees_video_only_when_the_encoder_mixes_them(fusion, tiny_model, clips):
    """Separate, shared: the audio+video call's audio head IS the audio-only call (unimodal graphs
    are "head"). Early, mid: the modalities meet in the encoder, so it is another function
    ("stream"); mid's audio stream below the joint layers still never sees video."""
    model = tiny_model(TINY[fusion])
    audio, video, other_video = clips(model.config)
    av, av_other, audio_only = model(audio=audio, video=video), model(audio=audio, video=other_video), model(audio=audio)
    video_only = model(video=video)
    assert set(audio_only) == {"audio", LOGITS_KEY} and torch.equal(audio_only[LOGITS_KEY], audio_only["audio"])
    if fusion in ("separate", "shared"):
        assert model.unimodal_graphs == "head"
        assert torch.equal(av["audio"], audio_only["audio"]) and torch.equal(av_other["audio"], av["audio"])
        assert torch.equal(av["video"], video_only["video"])
    else:
        assert model.unimodal_graphs == "stream"
        assert (av["audio"] - audio_only["audio"]).abs().max() > 1e-4
        assert (av_other["audio"] - av["audio"]).abs().max() > 1e-4
        assert (av["video"] - video_only["video"]).abs().max() > 1e-4
    torch.testing.assert_close(av[LOGITS_KEY], (av["audio"] + av["video"]) / 2, atol=1e-6, rtol=0)

    if fusion == "mid":  # the last private audio layer's output does not depend on the video
        seen = []
        last_private = model.encoders["audio"][model.config.first_joint_layer - 1]
        hook = last_private.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            model(audio=audio, video=video), model(audio=audio, video=other_video), model(audio=audio)
        finally:
            hook.remove()
        assert len(seen) == 3 and torch.equal(seen[0], seen[1]) and torch.equal(seen[0], seen[2])


@pytest.mark.parametrize("fusion", ENCODER_FUSIONS)
@pytest.mark.parametrize("absent", ["audio", "video"])
@torch.no_grad()
def test_mixed_batch_gives_each_clip_its_unimodal_answer(fusion, absent, tiny_model, make_audio, make_video):
    """base.py "Mixed batches": a clip lacking a modality (zero-filled, present False) gets from the
    other modality's head what the unimodal call gives; a clip with both, what the audio+video call gives."""
    model = tiny_model(TINY[fusion])
    cfg = model.config
    batch = {"audio": make_audio(cfg, 4, seed=1), "video": make_video(cfg, 4, seed=2)}
    has = torch.tensor([True, False, True, False])
    kept = "video" if absent == "audio" else "audio"
    inputs = dict(batch)
    inputs[absent] = batch[absent].clone()
    inputs[absent][~has] = 0
    mixed = model(**inputs, present={absent: has, kept: torch.ones(4, dtype=torch.bool)})
    unimodal = model(**{kept: batch[kept]})
    both = model(**batch)
    torch.testing.assert_close(mixed[kept][~has], unimodal[kept][~has], atol=1e-5, rtol=0)
    for head in model.head_names:
        torch.testing.assert_close(mixed[head][has], both[head][has], atol=1e-5, rtol=0)
    if fusion in ("early", "mid"):  # the check can fail: without `present` the zeros leak in
        careless = model(**inputs)
        assert (careless[kept][~has] - unimodal[kept][~has]).abs().max() > 1e-4


@pytest.mark.parametrize("fusion", ENCODER_FUSIONS)
def test_a_unimodal_backward_touches_no_parameter_named_after_the_other_modality(fusion, tiny_model, make_audio, make_video):
    """Tied and joint layers are named encoders.shared.* (and counted once); a parameter named
    after a modality belongs to it alone. Shared: encoders.audio[i] is encoders.video[i], and the
    state dict holds each tied tensor under its three names."""
    model = tiny_model(TINY[fusion]).train()
    cfg = model.config
    names = [n for n, _ in model.named_parameters()]
    inputs = {"audio": make_audio(cfg, 2, seed=1), "video": make_video(cfg, 2, seed=2)}
    for modality, other in (("audio", "video"), ("video", "audio")):
        model.zero_grad(set_to_none=True)
        model(**{modality: inputs[modality]})[LOGITS_KEY].sum().backward()
        touched = {n for n, p in model.named_parameters() if p.grad is not None and torch.count_nonzero(p.grad) > 0}
        assert not [n for n in touched if other in n], fusion
        assert any(f"encoders.{modality}." in n for n in touched) == (fusion in ("separate", "mid"))
        assert any(n.startswith("encoders.shared.") for n in touched) == (fusion != "separate")
        assert {n for n in names if modality in n} <= touched  # its own: tokeniser, CLS, positions, norm, head
    if fusion == "shared":
        assert all(model.encoders["audio"][i] is model.encoders["video"][i] for i in range(cfg.depth))
        assert not [n for n in names if n.startswith(("encoders.audio", "encoders.video", "final_norm.audio", "final_norm.video"))]
        state = model.state_dict()
        for suffix in ("0.attn.qkv.weight", f"{cfg.depth - 1}.mlp.fc2.bias"):
            pointers = {state[f"encoders.{s}.{suffix}"].data_ptr() for s in ("shared", "audio", "video")}
            assert len(pointers) == 1
    if fusion == "separate":
        assert "shared" not in model.encoders and "shared" not in model.final_norm


# ---- tubelets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 2])
def test_tubelet_embed_is_a_linear_map_of_the_tubelet_patches(frames):
    torch.manual_seed(0)
    batch, time, size, patch, dim = 2, 4, 16, 8, 24
    embed = TubeletEmbed(3, dim, patch, frames)
    assert isinstance(embed.proj, torch.nn.Conv3d if frames > 1 else torch.nn.Conv2d)
    clips = torch.randn(batch, time, 3, size, size)
    tokens = embed(clips.reshape(batch * time, 3, size, size), batch)
    patches = patchify_tubelets(clips.transpose(1, 2), frames, patch)  # [B, 3, T, H, W] in
    assert patches.shape == (batch, (time // frames) * (size // patch) ** 2, 3 * frames * patch * patch)
    expected = patches @ embed.proj.weight.reshape(dim, -1).T + embed.proj.bias
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=0)
    if frames == 1:  # one frame per token: patchify's layout, frame after frame
        per_frame = patchify(clips.reshape(batch * time, 3, size, size), patch).reshape(batch, -1, 3 * patch * patch)
        assert torch.equal(patches, per_frame)


def test_patchify_tubelets_layout_and_its_inverse():
    g = torch.Generator().manual_seed(0)
    voxels = torch.randn(2, 3, 6, 8, 12, generator=g)  # [B, C, T, H, W]
    t, p = 2, 4
    patches = patchify_tubelets(voxels, t, p)
    grid = (3, 2, 3)
    assert patches.shape == (2, 18, 3 * t * p * p)
    # token (time 1, row 0, column 2) = index 1*6 + 0*3 + 2, laid out (channel, time, row, column)
    assert torch.equal(patches[:, 8], voxels[:, :, 2:4, 0:4, 8:12].reshape(2, -1))
    assert torch.equal(unpatchify_tubelets(patches, grid, 3, t, p), voxels)


@pytest.mark.parametrize("name", ["avmae_tiny", "mbt_avmae_tiny", "mbt_tiny"])
@torch.no_grad()
def test_unpatchify_of_the_targets_is_the_clean_log_mel_and_the_normalised_frames(name, make_audio, make_video):
    """patch_targets are computed without training augmentation (here all of it on, in train mode)."""
    torch.manual_seed(0)
    model = create_model(name, spec_time_shift=True, specaug_time_masks=2, specaug_freq_masks=2).train()
    cfg = model.config
    audio, video = make_audio(cfg, 2, seed=1), make_video(cfg, 2, seed=2)
    targets = model.patch_targets(audio=audio, video=video)
    assert {m: tuple(x.shape) for m, x in targets.items()} == {
        m: (2, model.token_counts[m], model.patch_dims[m]) for m in ("audio", "video")
    }
    assert model.patch_dims["video"] == 3 * cfg.tubelet_frames * cfg.patch_size**2
    log_mel = model.log_mel(audio)
    assert torch.equal(model.unpatchify("audio", targets["audio"]), log_mel)
    frames = model.pixel_norm(video).reshape(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    assert torch.equal(model.unpatchify("video", targets["video"]), frames)
    tokens = model.tokenize(audio=audio, video=video)  # aligned with the token grid
    assert {m: x.shape[1] for m, x in tokens.items()} == model.token_counts
    grid = model.token_grids
    assert grid["video"] == (cfg.num_frames // cfg.tubelet_frames, cfg.image_size // cfg.patch_size, cfg.image_size // cfg.patch_size)
    assert grid["audio"] == (cfg.spectrogram_frames // cfg.patch_size, cfg.n_mels // cfg.patch_size)


def test_single_frame_tubelet_embed_loads_a_patch_embed2d_state():
    """Old MBT checkpoints held the video tokeniser as PatchEmbed2d(3, d, p): t = 1 keeps its names,
    shapes and function, so they load as they are."""
    torch.manual_seed(0)
    old, new = PatchEmbed2d(3, 32, 8), TubeletEmbed(3, 32, 8, frames=1)
    assert {k: v.shape for k, v in new.state_dict().items()} == {k: v.shape for k, v in old.state_dict().items()}
    new.load_state_dict(old.state_dict(), strict=True)
    frames = torch.randn(2 * 3, 3, 16, 16)
    assert torch.equal(new(frames, 2), old(frames).reshape(2, -1, 32))
    model = create_model("mbt_tiny")
    names = {k: v.shape for k, v in model.state_dict().items() if k.startswith("patch_embed.video.")}
    assert names == {f"patch_embed.video.{k}": v.shape for k, v in PatchEmbed2d(3, 96, 16).state_dict().items()}


# ---- random circular time shift -----------------------------------------------------------------


def shift_of(out: torch.Tensor, x: torch.Tensor) -> int | None:
    """The k with out == roll(x, k) along time (dim 0), or None."""
    matches = [k for k in range(x.shape[0]) if torch.equal(out, torch.roll(x, k, dims=0))]
    assert len(matches) <= 1
    return matches[0] if matches else None


def test_random_time_shift_is_a_circular_roll_per_example():
    layer = RandomTimeShift().train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 20, 5, generator=g)
    torch.manual_seed(0)
    y = layer(x)
    shifts = [shift_of(y[b], x[b]) for b in range(8)]
    assert None not in shifts and len(set(shifts)) > 1  # each a rotation, not all by the same offset
    torch.testing.assert_close(y.sum(1), x.sum(1))  # sums along time (per bin) are kept
    assert torch.equal(y.sort(1).values, x.sort(1).values)  # the very same values
    # the offsets cover [0, frames) (0 included), each a roll of that many frames
    frames = 7
    ramp = torch.arange(frames, dtype=torch.float32).view(1, frames, 1).expand(2000, frames, 3)
    rolled = layer(ramp)
    offsets = (-rolled[:, 0, 0]).remainder(frames).long()
    assert set(offsets.tolist()) == set(range(frames))
    assert torch.equal(rolled, torch.stack([torch.roll(ramp[0], int(k), dims=0) for k in offsets]))
    # identity in eval mode and when switched off
    assert torch.equal(layer.eval()(x), x)
    layer.train().enabled = False
    assert torch.equal(layer(x), x)


@pytest.mark.parametrize("name", ["mbt_avmae_tiny", "avmae_tiny"])
def test_spec_time_shift_runs_in_training_only(name, make_audio):
    """spec_time_shift=True puts a RandomTimeShift before the audio tokeniser, active in training
    only and off after set_input_augmentation(False) (what the masked objective calls); off by default."""
    assert not isinstance(create_model(name).time_shift, RandomTimeShift)
    torch.manual_seed(0)
    model = create_model(name, spec_time_shift=True, specaug_time_masks=0, specaug_freq_masks=0)
    assert isinstance(model.time_shift, RandomTimeShift)
    audio = make_audio(model.config, 4, seed=1)
    seen = []
    model.patch_embed["audio"].register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 0]))
    with torch.no_grad():
        log_mel = model.log_mel(audio)
        model.train()(audio=audio)
        model.eval()(audio=audio)
        model.train().set_input_augmentation(False)
        model(audio=audio)
    shifts = [shift_of(seen[0][b], log_mel[b]) for b in range(4)]
    assert None not in shifts and any(shifts)
    assert torch.equal(seen[1], log_mel) and torch.equal(seen[2], log_mel)


# ---- initialising an MBT from a pretrained AV-MAE ----------------------------------------------------


@pytest.mark.parametrize("fusion", ENCODER_FUSIONS)
def test_avmae_initialises_mbt_by_name_and_the_streams_untie(fusion, tmp_path, make_audio):
    """Sec. 4.1: separate encoders initialise each MBT stream, early / shared (and mid's joint
    layers) both; init_from's plain name match does it, and the copies train apart."""
    from training.checkpoint import init_from, save_checkpoint

    torch.manual_seed(0)
    source = create_model(TINY[fusion])
    path = tmp_path / "avmae.pt"
    save_checkpoint(path, {"model": source.state_dict()})
    torch.manual_seed(1)
    mbt = create_model("mbt_avmae_tiny")
    cfg = mbt.config
    assert not torch.equal(mbt.encoders["audio"][0].attn.qkv.weight, source.encoders["audio"][0].attn.qkv.weight)

    report = init_from(mbt, path)
    assert not report.mismatched and not report.resized
    assert sorted(report.unexpected) == [f"classifier.{m}.{p}" for m in ("audio", "video") for p in ("bias", "weight")]
    assert sorted(report.missing) == ["bottleneck", "classifier.bias", "classifier.weight"]
    for stream in ("audio", "video"):
        for index in range(cfg.depth):
            got, want = mbt.encoders[stream][index].state_dict(), source.encoders[stream][index].state_dict()
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) for k in want), (stream, index)
        for prefix in ("patch_embed", "pos_embed", "final_norm"):
            got, want = getattr(mbt, prefix)[stream].state_dict(), getattr(source, prefix)[stream].state_dict()
            assert all(torch.equal(got[k], want[k]) for k in want), (prefix, stream)
        assert torch.equal(mbt.cls_token[stream], source.cls_token[stream])
    tied = [i for i in range(cfg.depth) if source.encoders["audio"][i] is source.encoders["video"][i]]
    assert len(tied) == {"separate": 0, "mid": 2}.get(fusion, cfg.depth)
    for index in tied:  # same values, separate tensors
        audio_qkv, video_qkv = mbt.encoders["audio"][index].attn.qkv.weight, mbt.encoders["video"][index].attn.qkv.weight
        assert torch.equal(audio_qkv, video_qkv) and audio_qkv.data_ptr() != video_qkv.data_ptr()

    # one SGD step on an audio-only loss: the video stream stays, the audio stream moves away
    before = {n: p.detach().clone() for n, p in mbt.named_parameters()}
    mbt.train()
    optimizer = torch.optim.SGD(mbt.parameters(), lr=0.5)
    labels = torch.arange(4) % cfg.num_classes
    F.cross_entropy(mbt(audio=make_audio(cfg, 4, seed=3))[LOGITS_KEY], labels).backward()
    optimizer.step()
    after = dict(mbt.named_parameters())
    video = [n for n in before if "video" in n]
    assert video and all(torch.equal(after[n], before[n]) for n in video)
    for index in range(cfg.depth):
        name = f"encoders.audio.{index}.attn.qkv.weight"
        assert not torch.equal(after[name], before[name]), name
        assert not torch.equal(after[name], after[name.replace("audio", "video")]), name


def test_mbt_finetuning_on_more_frames_interpolates_the_pretrained_positions_along_time(tmp_path):
    """Table 16: pretrained on 16 frames, finetuned on 32 (mbt_avmae_vit_b16: 3136 video tokens).
    In small: avmae_tiny's 2 x 4 x 4 tubelet grid into an MBT of 8 frames, 4 x 4 x 4: the CLS
    position kept, each spatial position's two time steps linearly interpolated to four."""
    from training.checkpoint import LAST, RUN_FILE, RunInfo, init_from, save_checkpoint, write_json

    assert build_on_meta("mbt_avmae_vit_b16").token_counts == {"audio": 400, "video": 3136}
    torch.manual_seed(0)
    source = create_model("avmae_tiny")
    save_checkpoint(tmp_path / LAST, {"model": source.state_dict()})
    classes = [str(i) for i in range(source.config.num_classes)]
    write_json(tmp_path / RUN_FILE, RunInfo(model="avmae_tiny", overrides={}, classes=classes, multilabel=False).to_dict())
    mbt = create_model("mbt_avmae_tiny", num_frames=8)
    assert mbt.token_grids["video"] == (4, 4, 4) and source.token_grids["video"] == (2, 4, 4)
    report = init_from(mbt, tmp_path)
    assert report.resized == ["pos_embed.video.embedding: (1, 33, 96) -> (1, 65, 96)"] and not report.mismatched
    before, after = source.pos_embed["video"].embedding.detach(), mbt.pos_embed["video"].embedding.detach()
    assert torch.equal(after[:, 0], before[:, 0])
    first, second = before[0, 1:17], before[0, 17:33]  # time step 0 and 1 of the 4 x 4 grid
    want = torch.cat([first, 0.75 * first + 0.25 * second, 0.25 * first + 0.75 * second, second])
    torch.testing.assert_close(after[0, 1:], want, atol=1e-6, rtol=0)
    assert torch.equal(mbt.pos_embed["audio"].embedding, source.pos_embed["audio"].embedding)


def test_tied_checkpoint_round_trips_into_the_same_fusion(tmp_path, make_audio, make_video):
    """A shared AV-MAE's state dict (each tied tensor under three names) loads strictly into another
    shared AV-MAE: same function, layers still tied."""
    torch.manual_seed(0)
    source = create_model("avmae_tiny_shared").eval()
    torch.save(source.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(1)
    target = create_model("avmae_tiny_shared").eval()
    target.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True), strict=True)
    cfg = source.config
    audio, video = make_audio(cfg, 2, seed=1), make_video(cfg, 2, seed=2)
    with torch.no_grad():
        want, got = source(audio=audio, video=video), target(audio=audio, video=video)
    assert all(torch.equal(got[k], want[k]) for k in want)
    for model in (target, copy.deepcopy(target)):  # a copy (EMA, export) keeps the tying too
        assert all(model.encoders["audio"][i] is model.encoders["video"][i] is model.encoders["shared"][str(i)] for i in range(cfg.depth))
