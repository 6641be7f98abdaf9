"""The objectives (training/objectives/): the trainer names none of them, and the masked
reconstruction objective computes what it says on any model with the token-level interface."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from training.models import AUDIO, VIDEO, create_model
from training.objectives import ObjectiveSetup, StepContext, TrainingModule, get_objective, list_objectives
from training.optim import resolve_recipe

TRAINER = Path(__file__).resolve().parents[2] / "training" / "trainer.py"


def test_the_trainer_names_no_objective():
    source = TRAINER.read_text()
    assert set(list_objectives()) >= {"supervised", "contrastive", "masked"}
    for name in list_objectives():
        assert not re.search(rf"\b{name}\b", source, re.IGNORECASE), name


def _masked(model, **options):
    objective_type = get_objective("masked")
    setup = ObjectiveSetup(model=model, classes=["a", "b"], multilabel=False, recipe=resolve_recipe("masked"),
                           options=objective_type.parse_options(options))  # fmt: skip
    objective = objective_type(setup)
    objective.configure_model(model)
    return objective


def _batch(model, batch=4, seed=0, structured=False):
    """Random clips; `structured`: clips with something to learn (a tone per clip, frames that
    are colour ramps), since white noise cannot be reconstructed better than its mean."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    if structured:
        t = torch.arange(cfg.clip_samples) / cfg.sample_rate
        audio = 0.5 * torch.sin(2 * torch.pi * (300 + 2000 * torch.rand(batch, 1, generator=g)) * t)
        ramp = torch.linspace(0, 255, cfg.image_size)
        colour = torch.rand(batch, 1, 1, 1, 3, generator=g)
        video = (ramp[None, None, None, :, None] * colour).expand(batch, cfg.num_frames, cfg.image_size, -1, -1).to(torch.uint8)
    else:
        audio = torch.rand(batch, cfg.clip_samples, generator=g) * 2 - 1
        video = torch.randint(0, 256, (batch, cfg.num_frames, cfg.image_size, cfg.image_size, 3), generator=g, dtype=torch.uint8)
    return {
        AUDIO: audio,
        VIDEO: video,
        "has_audio": torch.ones(batch, dtype=torch.bool),
        "has_video": torch.ones(batch, dtype=torch.bool),
        "index": torch.arange(batch),
    }


def test_masked_loss_counts_only_the_masked_tokens():
    torch.manual_seed(0)
    model = create_model("zorro_tiny", num_classes=2)
    objective = _masked(model, mask_ratio_audio=0.5, mask_ratio_video=0.75)
    batch = _batch(model)
    with torch.no_grad():
        outputs = objective(model, audio=batch[AUDIO], video=batch[VIDEO], seeds=[0, 1, 2, 3])
    keep = outputs["keep"]
    assert keep[AUDIO].shape == (4, model.token_counts[AUDIO] // 2) and keep[VIDEO].shape == (4, model.token_counts[VIDEO] // 4)
    before = objective.errors(outputs)
    # a prediction changed only where tokens were visible leaves the loss as it was ...
    visible = outputs["predictions"][VIDEO].clone()
    rows = torch.arange(4)[:, None]
    visible[rows, keep[VIDEO]] += 100.0
    after = objective.errors({**outputs, "predictions": {**outputs["predictions"], VIDEO: visible}})
    torch.testing.assert_close(after[VIDEO], before[VIDEO])
    # ... and the exact (normalised) target at the masked positions gives zero error
    target = outputs["targets"][AUDIO]
    normalised = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    perfect = objective.errors({**outputs, "predictions": {**outputs["predictions"], AUDIO: normalised}})
    assert torch.all(perfect[AUDIO] < 1e-10) and torch.all(before[AUDIO] > 0.1)


@pytest.mark.parametrize("preset", ["zorro_tiny", "mbt_tiny"])  # AV-MAE: tests/models/test_avmae_objective.py
def test_masked_pretraining_learns_to_reconstruct(preset):
    """A short learning test: 25 Adam steps on one batch lower the held-out-mask error."""
    torch.manual_seed(0)
    model = create_model(preset, num_classes=2)
    objective = _masked(model)
    net = TrainingModule(model, objective).train()
    ctx = StepContext(model, torch.device("cpu"), np.random.default_rng(0))
    batch = _batch(model, structured=True)

    def eval_error():
        net.eval()
        errors = objective.eval_batch(net, batch, ctx)["error"]
        net.train()
        return sum(float(e.mean()) for e in errors.values())

    start = eval_error()
    assert eval_error() == start  # evaluation masks are fixed per clip
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(25):
        loss, logs = objective.training_loss(net, batch, ctx)
        assert set(logs) == {"loss/audio", "loss/video"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    heads = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    assert heads and all(p.grad is None for p in heads)  # the classifier gets no gradient
    end = eval_error()
    print(f"{preset}: held-out-mask error {start:.3f} -> {end:.3f}")
    assert end < 0.8 * start


def test_masked_needs_the_token_interface(tmp_path):
    from training.objectives import ObjectiveError

    class NoTokens(torch.nn.Module):
        supports_tokens = False

    with pytest.raises(ObjectiveError, match="token-level interface"):
        _masked(NoTokens())
