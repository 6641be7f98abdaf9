"""The vatt_nce objective (training/objectives/vatt_nce.py): the MIL-NCE formula, DropToken,
modality independence of the audio embedding, clips without text, and what it refuses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.models import create_model
from training.objectives import ObjectiveError, ObjectiveSetup, get_objective
from training.objectives.vatt_nce import multiple_instance_nce
from training.optim import resolve_recipe



def reference_mil_nce(video, texts, valid, tau):
    """Sec. 3.4 written out clip by clip: positives = clip i's valid captions with its video;
    negatives = every other clip's valid captions with video i, and video j != i with clip i's."""
    n = video.shape[0]
    total = 0.0
    for i in range(n):
        positive = [math.exp(float(video[i] @ texts[i, k]) / tau) for k in range(texts.shape[1]) if valid[i, k]]
        negative = 0.0
        for j in range(n):
            if j == i:
                continue
            negative += sum(math.exp(float(video[i] @ texts[j, k]) / tau) for k in range(texts.shape[1]) if valid[j, k])
            negative += sum(math.exp(float(video[j] @ texts[i, k]) / tau) for k in range(texts.shape[1]) if valid[i, k])
        total += -math.log(sum(positive) / (sum(positive) + negative))
    return total / n


def test_mil_nce_is_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    video = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(5, 3, 8, generator=g, dtype=torch.float64), dim=-1)
    valid = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    got = float(multiple_instance_nce(video, texts, valid, tau=0.07))
    assert got == pytest.approx(reference_mil_nce(video, texts, valid, 0.07), rel=1e-9)
    # a caption that is not there changes nothing, whatever its embedding holds
    texts[1, 2] = F.normalize(torch.randn(8, generator=g, dtype=torch.float64), dim=-1)
    assert float(multiple_instance_nce(video, texts, valid, tau=0.07)) == pytest.approx(got, rel=1e-12)
    # NCE(video, audio) is the K = 1 case
    audio = texts[:, 0]
    ones = torch.ones(5, 1, dtype=torch.bool)
    assert float(multiple_instance_nce(video, audio[:, None], ones, 0.07)) == pytest.approx(
        reference_mil_nce(video, audio[:, None], ones, 0.07), rel=1e-9
    )


def test_mil_nce_rewards_alignment():
    g = torch.Generator().manual_seed(1)
    video = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    aligned = video[:, None].repeat(1, 2, 1)
    shuffled = aligned[torch.tensor([1, 2, 3, 4, 5, 0])]
    valid = torch.ones(6, 2, dtype=torch.bool)
    assert multiple_instance_nce(video, aligned, valid, 0.07) < 0.1 < multiple_instance_nce(video, shuffled, valid, 0.07)


# ---- the objective on a tiny model ----------------------------------------------------------


def objective_for(model):
    objective = get_objective("vatt_nce")
    setup = ObjectiveSetup(
        model=model, classes=[str(i) for i in range(12)], multilabel=False, recipe=resolve_recipe("vatt"),
        options=objective.parse_options({}),
    )  # fmt: skip
    return objective(setup)


def batch_for(model, make_audio, make_video, size=4, seed=0):
    cfg = model.config
    spec = get_objective("vatt_nce").text_input
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, cfg.vocab_size, (size, spec.max_captions, spec.max_words), generator=g)
    text[:, :, 10:] = 0  # padding
    return {
        "audio": make_audio(cfg, size, seed=seed),
        "video": make_video(cfg, size, seed=seed + 1),
        "has_audio": torch.ones(size, dtype=torch.bool),
        "has_video": torch.ones(size, dtype=torch.bool),
        "text": text,
        "text_mask": torch.ones(size, spec.max_captions, dtype=torch.bool),
    }


def test_droptoken_halves_the_tokens_in_training_only(make_audio, make_video):
    torch.manual_seed(0)
    model = create_model("vatt_tiny")
    objective = objective_for(model)
    seen = {}
    for modality in ("audio", "video"):
        first_block = model.backbones[modality].blocks[0]
        first_block.register_forward_pre_hook(lambda m, args, name=modality: seen.__setitem__(name, args[0].shape[1]))
    batch = batch_for(model, make_audio, make_video)
    cfg = model.config
    objective.train(), model.train()
    objective(model, **batch)
    assert seen == {"audio": 1 + cfg.num_audio_tokens // 2, "video": 1 + cfg.num_video_tokens // 2}  # AGG + half
    objective.eval(), model.eval()
    with torch.no_grad():
        objective(model, **batch)
    assert seen == {"audio": 1 + cfg.num_audio_tokens, "video": 1 + cfg.num_video_tokens}


@pytest.mark.parametrize("preset", ["vatt_tiny", "vatt_ma_tiny"])
def test_audio_embedding_is_bit_identical_under_any_change_of_video_or_text(preset, make_audio, make_video):
    torch.manual_seed(0)
    model = create_model(preset).eval()
    objective = objective_for(model).eval()
    batch = batch_for(model, make_audio, make_video, seed=0)
    other = batch_for(model, make_audio, make_video, seed=5)
    with torch.no_grad():
        reference = objective(model, **batch)
        changed = objective(model, **{**batch, "video": other["video"], "text": other["text"]})
        features = model.forward_features(audio=batch["audio"], video=other["video"])["audio"]
    assert torch.equal(changed["audio_va"], reference["audio_va"])
    assert torch.equal(features, model.forward_features(audio=batch["audio"])["audio"])
    assert not torch.equal(changed["video_va"], reference["video_va"]) and not torch.equal(changed["text_vt"], reference["text_vt"])


def test_clips_without_text_leave_the_mil_nce_term(make_audio, make_video):
    torch.manual_seed(0)
    model = create_model("vatt_tiny").eval()
    objective = objective_for(model).eval()
    batch = batch_for(model, make_audio, make_video, size=5)
    batch["text_mask"][2] = False  # clip 2 has no captions
    with torch.no_grad():
        embeddings = objective(model, **batch)
        losses = objective.losses(embeddings, batch, gather=False)
        keep = torch.tensor([0, 1, 3, 4])
        without = objective.losses({k: v[keep] for k, v in embeddings.items()}, {k: v[keep] for k, v in batch.items()}, gather=False)
    assert torch.equal(embeddings["text_vt"][2], torch.zeros_like(embeddings["text_vt"][2]))
    assert float(losses["mil_nce"]) == pytest.approx(float(without["mil_nce"]), rel=1e-6)
    assert float(losses["nce"]) != pytest.approx(float(without["nce"]), rel=1e-6)  # its audio and video still pair


def test_every_batch_gives_every_embedding_even_without_pairs(make_audio, make_video):
    """DDP gathers the same keys and shapes on every rank: a batch with one video clip and no text
    still returns zeros for them, with a gradient path in training."""
    torch.manual_seed(0)
    model = create_model("vatt_tiny").train()
    objective = objective_for(model).train()
    batch = batch_for(model, make_audio, make_video, size=3)
    batch["has_video"] = torch.tensor([True, False, False])
    batch["text_mask"][:] = False
    out = objective(model, **batch)
    assert set(out) == {"video_va", "video_vt", "audio_va", "text_vt"}
    assert out["text_vt"].shape == (3, 5, model.config.vt_dim) and out["text_vt"].requires_grad
    assert objective.losses(out, batch, gather=False) == {}


def test_rows_without_an_embedding_stay_out_of_the_losses(make_audio, make_video):
    """The zeros forward returns where it computed no embedding (under DDP, a rank whose batch
    had one such clip) never enter a loss, even though the clip's flag says it has the modality."""
    torch.manual_seed(0)
    model = create_model("vatt_tiny").eval()
    objective = objective_for(model).eval()
    batch = batch_for(model, make_audio, make_video, size=5)
    with torch.no_grad():
        embeddings = objective(model, **batch)
    embeddings["audio_va"][1] = 0.0
    embeddings["text_vt"][3, 0] = 0.0
    flagged = {**batch, "has_audio": batch["has_audio"].clone(), "text_mask": batch["text_mask"].clone()}
    flagged["has_audio"][1] = False
    flagged["text_mask"][3, 0] = False
    assert objective.losses(embeddings, batch, gather=False) == objective.losses(embeddings, flagged, gather=False)


def test_refuses_other_architectures():
    with pytest.raises(ObjectiveError, match="VATT"):
        objective_for(create_model("zorro_tiny"))
