"""The masked objective on AV-MAE (training/objectives/masked.py; digest shared/papers/
pemt-vatt-avmae.md C.1.2-C.1.5, D.3): the decoder's size, a loss on masked tokens only with
equal modality weights, the three decoder structures, modality inpainting (the encoder sees the
source only, the decoder a sequence as long as the target, the loss the trailing positions) and
the options it refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.models import AUDIO, VIDEO, create_model
from training.objectives import ObjectiveError, ObjectiveSetup, StepContext, TrainingModule, get_objective
from training.optim import resolve_recipe

SEEDS = [0, 1, 2]


def masked(model, **options):
    objective_type = get_objective("masked")
    setup = ObjectiveSetup(model=model, classes=["a", "b"], multilabel=False, recipe=resolve_recipe("masked"),
                           options=objective_type.parse_options(options))  # fmt: skip
    objective = objective_type(setup)
    objective.configure_model(model)
    return objective


def tiny(name: str = "avmae_tiny", seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name).eval()


@pytest.fixture
def clips(make_audio, make_video):
    """(config -> audio, video, other audio, other video), batch 3."""

    def make(config):
        return make_audio(config, 3, seed=1), make_video(config, 3, seed=2), make_audio(config, 3, seed=3), make_video(config, 3, seed=4)

    return make


def normalised(target: torch.Tensor) -> torch.Tensor:
    return (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()


def first_block_inputs(objective) -> tuple[list, list]:
    """Hooks recording the input shape of every decoder layer stack's first block: (shapes, hooks)."""
    blocks = objective.decoder.blocks
    firsts = [stack[0] for stack in blocks.values()] if isinstance(blocks, torch.nn.ModuleDict) else [blocks[0]]
    shapes: list = []
    hooks = [b.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape))) for b in firsts]
    return shapes, hooks


# ---- the decoder's size (meta device) -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, width, heads, expected",
    # The digest's computed values (C.1.4, D.3.6): 4 pre-LN layers of Table 15's width and MLP 4x.
    [("avmae_vit_b16_mid", 384, 6, 7_097_856), ("avmae_vit_l16_mid", 512, 8, 12_609_536)],
)
def test_decoder_stack_parameter_counts_are_the_digests(name, width, heads, expected):
    with torch.device("meta"):
        model = create_model(name)
        objectives = {d: masked(model, decoder=d) for d in ("shared", "early", "separate")}
    decoder = objectives["shared"].decoder
    assert all(p.is_meta for p in decoder.parameters())
    assert len(decoder.blocks) == 4
    first = decoder.blocks[0]
    assert (first.attn.num_heads, first.attn.head_dim * first.attn.num_heads, first.mlp.fc1.out_features) == (heads, width, 4 * width)
    assert sum(p.numel() for p in decoder.blocks.parameters()) == expected
    assert sum(p.numel() for p in objectives["early"].decoder.blocks.parameters()) == expected
    assert sum(p.numel() for p in objectives["separate"].decoder.blocks.parameters()) == 2 * expected
    assert decoder.embed[VIDEO].in_features == model.config.dim and decoder.embed[VIDEO].out_features == width
    assert (decoder.predict[VIDEO].out_features, decoder.predict[AUDIO].out_features) == (1536, 256)


# ---- joint reconstruction: the loss is on masked tokens only ------------------------------------


def test_loss_counts_only_masked_tokens_with_equal_modality_weights(clips):
    model = tiny()
    objective = masked(model)
    audio, video, _, _ = clips(model.config)
    with torch.no_grad():
        outputs = objective(model, audio=audio, video=video, seeds=SEEDS)
    keep, counts = outputs["keep"], model.token_counts
    assert {m: tuple(k.shape) for m, k in keep.items()} == {AUDIO: (3, 24), VIDEO: (3, 4)}  # 50 % of 48, 90 % of 32
    assert {m: tuple(p.shape) for m, p in outputs["predictions"].items()} == {
        m: (3, counts[m], model.patch_dims[m]) for m in (AUDIO, VIDEO)
    }
    errors = objective.errors(outputs)
    rows = torch.arange(3)[:, None]
    for m in (AUDIO, VIDEO):
        hidden = torch.ones(3, counts[m], dtype=torch.bool)
        hidden[rows, keep[m]] = False
        # the per-clip error is the mean over its masked tokens of the per-token MSE (1 / (alpha n))
        per_token = (outputs["predictions"][m] - normalised(outputs["targets"][m])).pow(2).mean(-1)
        want = torch.stack([per_token[b][hidden[b]].mean() for b in range(3)])
        torch.testing.assert_close(errors[m], want, atol=1e-6, rtol=1e-6)
        for key in ("predictions", "targets"):
            visible = outputs[key][m].clone()
            visible[rows, keep[m]] += torch.randn(3, keep[m].shape[1], visible.shape[-1])
            changed = objective.errors({**outputs, key: {**outputs[key], m: visible}})
            assert torch.equal(changed[m], errors[m]), (m, key)
            one_hidden = outputs[key][m].clone()
            position = int(hidden[1].nonzero()[0])
            one_hidden[1, position] += torch.randn(one_hidden.shape[-1])
            changed = objective.errors({**outputs, key: {**outputs[key], m: one_hidden}})
            assert torch.equal(changed[m][[0, 2]], errors[m][[0, 2]]) and changed[m][1] != errors[m][1], (m, key)

    # the training loss is L_a + L_v (equal weights), each the batch mean of its clips' errors
    batch = {AUDIO: audio, VIDEO: video, "has_audio": torch.ones(3, dtype=torch.bool), "has_video": torch.ones(3, dtype=torch.bool)}
    ctx = StepContext(model, torch.device("cpu"), np.random.default_rng(0))
    net = TrainingModule(model, objective)
    torch.manual_seed(5)
    with torch.no_grad():
        loss, logs = objective.training_loss(net, batch, ctx)
    torch.manual_seed(5)  # the same masks
    with torch.no_grad():
        again = objective.errors(objective(model, audio=audio, video=video))
    torch.testing.assert_close(loss, again[AUDIO].mean() + again[VIDEO].mean())
    assert logs == pytest.approx({"loss/audio": float(again[AUDIO].mean()), "loss/video": float(again[VIDEO].mean())})


def structured_batch(model, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Clips with something to learn (a tone each, frames that are colour ramps), as
    tests/training/test_objectives.py's: white noise cannot be reconstructed better than its mean."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(cfg.clip_samples) / cfg.sample_rate
    audio = 0.5 * torch.sin(2 * torch.pi * (300 + 2000 * torch.rand(batch, 1, generator=g)) * t)
    ramp = torch.linspace(0, 255, cfg.image_size)
    colour = torch.rand(batch, 1, 1, 1, 3, generator=g)
    video = (ramp[None, None, None, :, None] * colour).expand(batch, cfg.num_frames, cfg.image_size, -1, -1).to(torch.uint8)
    every = torch.ones(batch, dtype=torch.bool)
    return {AUDIO: audio, VIDEO: video, "has_audio": every, "has_video": every, "index": torch.arange(batch)}


@pytest.mark.parametrize("decoder", ["shared"])  # the default; the other structures' wiring is tested above
def test_masked_pretraining_of_avmae_learns_to_reconstruct(decoder):
    """A short learning test: 25 Adam steps on one batch lower the held-out-mask error, and the
    classifier heads get no gradient."""
    model = tiny()
    objective = masked(model, decoder=decoder)
    net = TrainingModule(model, objective).train()
    ctx = StepContext(model, torch.device("cpu"), np.random.default_rng(0))
    batch = structured_batch(model)

    def eval_error():
        net.eval()
        errors = objective.eval_batch(net, batch, ctx)["error"]
        net.train()
        return sum(float(e.mean()) for e in errors.values())

    start = eval_error()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(25):
        loss, _ = objective.training_loss(net, batch, ctx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("classifier."))
    end = eval_error()
    print(f"avmae_tiny, {decoder} decoder: held-out-mask error {start:.3f} -> {end:.3f}")
    assert end < 0.8 * start


@torch.no_grad()
def test_the_objective_trains_on_clean_inputs(make_audio, make_video):
    """configure_model switches the model's own augmentation off (time shift, SpecAugment): in
    training mode the masked inputs and the targets are the clean signal, the same every call."""
    torch.manual_seed(0)
    model = create_model("avmae_tiny", spec_time_shift=True, specaug_time_masks=2, specaug_freq_masks=2).train()
    objective = masked(model)
    cfg = model.config
    audio, video = make_audio(cfg, 2, seed=1), make_video(cfg, 2, seed=2)
    first, second = (objective(model, audio=audio, video=video, seeds=[0, 1]) for _ in range(2))
    evaluated = objective(model.eval(), audio=audio, video=video, seeds=[0, 1])
    for m in (AUDIO, VIDEO):
        assert torch.equal(first["predictions"][m], second["predictions"][m])
        assert torch.equal(first["predictions"][m], evaluated["predictions"][m])
    assert torch.equal(model.unpatchify(AUDIO, first["targets"][AUDIO]), model.log_mel(audio))


# ---- decoder structures ---------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["shared", "separate", "early"])
@torch.no_grad()
def test_decoder_structures(decoder, clips):
    """With a separate-fusion encoder the modalities can only meet in the decoder: "shared" (one set
    of layers run on each modality alone) and "separate" (a set each) keep them apart, "early" (one
    set over both sequences) lets each help reconstruct the other."""
    model = tiny("avmae_tiny_separate")
    objective = masked(model, decoder=decoder)
    audio, video, other_audio, other_video = clips(model.config)
    counts = model.token_counts
    shapes, hooks = first_block_inputs(objective)
    try:
        base = objective(model, audio=audio, video=video, seeds=SEEDS)["predictions"]
    finally:
        for hook in hooks:
            hook.remove()
    new_video = objective(model, audio=audio, video=other_video, seeds=SEEDS)["predictions"]
    new_audio = objective(model, audio=other_audio, video=video, seeds=SEEDS)["predictions"]
    assert not torch.equal(new_video[VIDEO], base[VIDEO]) and not torch.equal(new_audio[AUDIO], base[AUDIO])
    width = objective.decoder.norm.normalized_shape[0]
    if decoder == "early":
        assert shapes == [(3, counts[VIDEO] + counts[AUDIO], width)]  # one sequence, video first
        assert (new_video[AUDIO] - base[AUDIO]).abs().max() > 1e-4
        assert (new_audio[VIDEO] - base[VIDEO]).abs().max() > 1e-4
    else:
        assert sorted(shapes) == sorted([(3, counts[VIDEO], width), (3, counts[AUDIO], width)])
        assert torch.equal(new_video[AUDIO], base[AUDIO]) and torch.equal(new_audio[VIDEO], base[VIDEO])

    blocks = objective.decoder.blocks
    per_stack = sum(p.numel() for p in masked(model).decoder.blocks.parameters())
    if decoder == "separate":
        assert set(blocks) == {AUDIO, VIDEO}
        ids = {m: {id(p) for p in blocks[m].parameters()} for m in (AUDIO, VIDEO)}
        assert not ids[AUDIO] & ids[VIDEO]
        assert all(sum(p.numel() for p in blocks[m].parameters()) == per_stack for m in (AUDIO, VIDEO))
    else:
        assert isinstance(blocks, torch.nn.ModuleList) and sum(p.numel() for p in blocks.parameters()) == per_stack


# ---- modality inpainting --------------------------------------------------------------------------


@pytest.mark.parametrize("source, target", [(AUDIO, VIDEO), (VIDEO, AUDIO)])
@torch.no_grad()
def test_inpainting_encodes_the_source_only_and_scores_the_trailing_positions(source, target, clips):
    """Sec. 3.4: z_t = [e_s || mask tokens], N_t long; loss on the trailing N_t - n_visible(s) positions."""
    model = tiny()  # mid fusion: cross-modal layers exist, but the source goes in alone
    objective = masked(model, task=f"{target}_from_{source}")
    audio, video, other_audio, other_video = clips(model.config)
    cfg = model.config
    seen = {AUDIO: 24, VIDEO: 4}[source]
    length, patch_dim = model.token_counts[target], model.patch_dims[target]
    encoder_inputs = []
    joint = model.encoders["shared"][str(cfg.first_joint_layer)]
    hooks = [joint.register_forward_pre_hook(lambda m, args: encoder_inputs.append(tuple(args[0].shape)))]
    shapes, decoder_hooks = first_block_inputs(objective)
    try:
        outputs = objective(model, audio=audio, video=video, seeds=SEEDS)
    finally:
        for hook in hooks + decoder_hooks:
            hook.remove()
    assert encoder_inputs == [(3, 1 + seen, cfg.dim)]  # the source's CLS and visible tokens, nothing else
    assert shapes == [(3, length, objective.decoder.norm.normalized_shape[0])]  # exactly N_target long
    prediction = outputs["predictions"][target]
    assert set(outputs["predictions"]) == {target} and prediction.shape == (3, length, patch_dim)
    assert torch.equal(outputs["keep"][target], torch.arange(seen).expand(3, -1))
    assert torch.count_nonzero(prediction[:, :seen]) == 0

    errors = objective.errors(outputs)
    assert set(errors) == {target}
    per_token = (prediction - normalised(outputs["targets"][target])).pow(2).mean(-1)
    torch.testing.assert_close(errors[target], per_token[:, seen:].mean(1), atol=1e-6, rtol=1e-6)
    for position in range(length):  # a change at position p counts iff p is one of the trailing
        changed = prediction.clone()
        changed[:, position] += 1.0
        moved = objective.errors({**outputs, "predictions": {target: changed}})[target]
        assert torch.equal(moved, errors[target]) == (position < seen), position

    # the target's own input changes the targets, never the predictions; the source's changes both
    other_inputs = {AUDIO: dict(audio=other_audio, video=video), VIDEO: dict(audio=audio, video=other_video)}
    new_target = objective(model, **other_inputs[target], seeds=SEEDS)
    assert torch.equal(new_target["predictions"][target], prediction)
    assert not torch.equal(new_target["targets"][target], outputs["targets"][target])
    new_source = objective(model, **other_inputs[source], seeds=SEEDS)
    assert (new_source["predictions"][target] - prediction).abs().max() > 1e-4


@pytest.mark.parametrize("task, decoder", [("joint", "shared"), ("joint", "early"), ("video_from_audio", "shared"), ("inpaint_both", "early")])
@torch.no_grad()
def test_a_missing_modalitys_stand_in_never_reaches_the_loss(task, decoder, make_audio, make_video):
    """--missing zero: clips 1 and 3 have no audio (zero-filled, has_audio False). Whatever stands in
    for their audio changes neither the training loss nor the evaluation scores: under joint
    reconstruction they add to the video loss only (an early decoder keeps the stand-in's tokens out
    of its keys, as the encoder does); under inpainting video from audio they add nothing (there is
    nothing to inpaint from), and evaluation scores what the clips that have both score."""
    model = tiny()
    objective = masked(model, task=task, decoder=decoder)
    cfg = model.config
    has_audio = torch.tensor([True, False, True, False])
    audio, video = make_audio(cfg, 4, seed=1), make_video(cfg, 4, seed=2)
    zeros, garbage = audio.clone(), audio.clone()
    zeros[~has_audio] = 0
    garbage[~has_audio] = torch.rand(2, cfg.clip_samples, generator=torch.Generator().manual_seed(9)) * 2 - 1
    every = torch.ones(4, dtype=torch.bool)
    net = TrainingModule(model, objective)
    ctx = StepContext(model, torch.device("cpu"), np.random.default_rng(0))

    def run(stand_in, clips=slice(None)):
        batch = {AUDIO: stand_in[clips], VIDEO: video[clips], "has_audio": has_audio[clips], "has_video": every[clips], "index": torch.arange(4)[clips]}
        torch.manual_seed(3)  # the same masks in every call
        loss, logs = objective.training_loss(net, batch, ctx)
        return loss, logs, objective.score(objective.eval_batch(net, batch, ctx), ctx)

    loss, logs, scores = run(zeros)
    other_loss, other_logs, other_scores = run(garbage)
    assert torch.equal(loss, other_loss) and logs == other_logs and scores == other_scores
    both = torch.tensor([0, 2])  # the clips that have both: evaluation masks are per clip (its index)
    _, _, both_scores = run(audio, both)
    if task == "joint":
        assert set(scores) - {"score"} == {"reconstruction", "reconstruction/audio", "reconstruction/video"}
        assert scores["reconstruction/audio"] == pytest.approx(both_scores["reconstruction/audio"], rel=1e-6)
    else:
        assert scores["reconstruction/video"] == pytest.approx(both_scores["reconstruction/video"], rel=1e-6)


@torch.no_grad()
def test_inpaint_both_at_paper_size_has_the_digests_sequence_lengths():
    """ViT-B mid on the meta device: video from 200 audio tokens, a 1568-long decoder sequence with
    1568 - 200 = 1368 mask tokens (C.1.5); audio from 157 video tokens, 400 long, 243 predicted."""
    with torch.device("meta"):
        model = create_model("avmae_vit_b16_mid").eval()
        objective = masked(model, task="inpaint_both")
        cfg = model.config
        shapes, hooks = first_block_inputs(objective)
        outputs = objective(
            model,
            audio=torch.empty(1, cfg.clip_samples),
            video=torch.empty(1, cfg.num_frames, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8),
        )
        for hook in hooks:
            hook.remove()
    assert shapes == [(1, 1568, 384), (1, 400, 384)]
    assert {m: tuple(k.shape) for m, k in outputs["keep"].items()} == {VIDEO: (1, 200), AUDIO: (1, 157)}
    assert {m: tuple(p.shape) for m, p in outputs["predictions"].items()} == {VIDEO: (1, 1568, 1536), AUDIO: (1, 400, 256)}
    assert 1568 - outputs["keep"][VIDEO].shape[1] == 1368 and 400 - outputs["keep"][AUDIO].shape[1] == 243


# ---- options it refuses -----------------------------------------------------------------------------


def test_bad_options_are_objective_errors():
    model = tiny()
    with pytest.raises(ObjectiveError, match="decoder must be one of shared, separate, early"):
        masked(model, decoder="late")
    with pytest.raises(ObjectiveError, match="task must be one of"):
        masked(model, task="audio_from_text")
    # video from audio: 48 - int(48 * r) visible audio tokens must leave some of the 32 video positions
    masked(model, task="video_from_audio", mask_ratio_audio=0.36)  # 31 visible: one position to predict
    for task in ("video_from_audio", "inpaint_both"):
        with pytest.raises(ObjectiveError, match="leave none of the 32 video positions"):
            masked(model, task=task, mask_ratio_audio=0.34)  # 32 visible
    with pytest.raises(ObjectiveError, match="leave none of the 48 audio positions"):
        masked(create_model("avmae_tiny", num_frames=12), task="audio_from_video", mask_ratio_video=0.5)  # 48 of 96
