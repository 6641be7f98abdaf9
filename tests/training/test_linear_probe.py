"""Linear probing (`avserve train --linear-probe`, VATT App. A.3 "linear evaluation"): a frozen
backbone, only the classifier heads (`head_prefixes`, training/models/base.py) trained.

The model-level tests run over every registered `*tiny*` preset, so a new architecture is covered
as soon as it registers one; the end-to-end runs take the first tiny preset of each architecture.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from avserve.cli import build_app
from training import checkpoint as ckpt
from training.models import AUDIO, VIDEO, create_model, list_models
from training.models.registry import _lookup
from training.trainer import TrainError, Trainer

TINY = list_models("*tiny*")
# one tiny preset per architecture class (the end-to-end runs cost a few seconds each)
ONE_PER_ARCHITECTURE = list({_lookup(name)[1]: name for name in reversed(TINY)}.values())


def _inputs(model, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    audio = torch.rand(batch, cfg.clip_samples, generator=g) * 2 - 1
    video = torch.randint(0, 256, (batch, cfg.num_frames, cfg.image_size, cfg.image_size, 3), generator=g, dtype=torch.uint8)
    return {AUDIO: audio, VIDEO: video}


def _head_module_names(model) -> set[str]:
    """Names of the modules that hold (or contain) a head parameter."""
    owners = {""}
    for name, _ in model.named_parameters():
        if model.is_head_parameter(name):
            parts = name.split(".")[:-1]
            owners.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return owners


def test_tiny_presets_exist():
    assert {"zorro_tiny", "mbt_tiny"} <= set(TINY)
    assert len(ONE_PER_ARCHITECTURE) >= 2


@pytest.mark.parametrize("name", TINY)
def test_head_prefixes_name_exactly_what_classify_uses(name):
    """head_prefixes agree with the contract: the parameters `classify` reaches on detached
    features are the head, the rest (forward_features) the backbone."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert model.head_prefixes, f"{name} declares no head_prefixes"
    with torch.no_grad():
        features = model.forward_features(**_inputs(model))
    logits = model.classify(features)
    sum(v.sum() for v in logits.values()).backward()
    used = {n for n, p in model.named_parameters() if p.grad is not None}
    head = {n for n, _ in model.named_parameters() if model.is_head_parameter(n)}
    assert used == head
    assert len(head) < len(list(model.parameters()))


@pytest.mark.parametrize("name", TINY)
def test_freeze_backbone_leaves_gradients_on_the_heads_only(name):
    torch.manual_seed(0)
    model = create_model(name)
    assert not model.backbone_frozen
    model.freeze_backbone()
    assert model.backbone_frozen
    model.train()
    out = model(**_inputs(model))
    out["logits"].square().sum().backward()
    for n, p in model.named_parameters():
        if model.is_head_parameter(n):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert not p.requires_grad and p.grad is None, n


@pytest.mark.parametrize("name", TINY)
def test_frozen_backbone_stays_in_eval_mode_under_train(name):
    torch.manual_seed(0)
    model = create_model(name)
    inputs = _inputs(model)
    owners = _head_module_names(model)
    model.train()
    assert all(m.training for m in model.modules())  # not frozen: nn.Module.train as usual
    model.freeze_backbone()
    for mode in (True, False, True):  # the trainer's evaluate() goes eval -> train again
        model.train(mode)
        for module_name, module in model.named_modules():
            expected = mode and module_name in owners
            assert module.training == expected, (module_name, mode)
    heads = [n for n, m in model.named_modules() if n and n in owners]
    assert heads and all(dict(model.named_modules())[n].training for n in heads)
    # behaviour, not only flags: the backbone's SpecAugment, jitter and stochastic depth are off,
    # so two training-mode passes give the same features (they differ without the freeze)
    with torch.no_grad():
        first = model.forward_features(**inputs)
        second = model.forward_features(**inputs)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    if name.startswith(("zorro", "mbt")):  # they have SpecAugment (and MBT stochastic depth): the check means something
        unfrozen = create_model(name).train()
        with torch.no_grad():
            a, b = unfrozen.forward_features(**inputs), unfrozen.forward_features(**inputs)
        assert any(not torch.equal(a[k], b[k]) for k in a), "training-mode augmentation should make unfrozen passes differ"


def test_freeze_backbone_refuses_a_model_without_head_prefixes(monkeypatch):
    model = create_model("zorro_tiny")
    monkeypatch.setattr(type(model), "head_prefixes", ())
    with pytest.raises(ValueError, match="declares no head_prefixes"):
        model.freeze_backbone()
    monkeypatch.setattr(type(model), "head_prefixes", ("no_such_module.",))
    with pytest.raises(ValueError, match="match no parameter"):
        model.freeze_backbone()
    assert not model.backbone_frozen and all(p.requires_grad for p in model.parameters())


def test_label_free_objective_is_refused(tiny_train):
    for objective in ("contrastive", "masked"):
        with pytest.raises(TrainError, match="--linear-probe trains the classifier heads on labels"):
            Trainer(tiny_train(objective=objective, linear_probe=True))


def test_linear_probe_is_a_train_option():
    result = CliRunner().invoke(build_app(), ["train", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "--linear-probe" in result.output
    assert "frozen backbone" in result.output


def _state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["model"]


@pytest.mark.parametrize("name", ONE_PER_ARCHITECTURE)
def test_probe_run_moves_the_heads_only(name, tiny_train, tmp_path):
    """--init-from a short supervised run, then --linear-probe: every backbone tensor (parameters
    and buffers) is bit-identical to the init checkpoint's, every head tensor has moved; the
    optimiser holds the head parameters only; the default recipe is linear_probe."""
    pre = tiny_train(model=name, out=tmp_path / "pre", steps=2, eval_split=None)
    Trainer(pre).fit()
    probe_cfg = tiny_train(model=name, out=tmp_path / "probe", steps=3, lr=None, eval_every=1, init_from=pre.out, linear_probe=True)
    trainer = Trainer(probe_cfg)
    model = trainer.model
    assert model.backbone_frozen
    assert trainer.recipe.name == "linear_probe" and trainer.peak_lr == 5e-4 and trainer.recipe.optimizer == "adam"
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    heads = {id(p) for n, p in model.named_parameters() if model.is_head_parameter(n)}
    assert optimised == heads
    trainer.fit()

    # evaluation (eval_every=1) switched the net to eval and back: the backbone is still in eval
    owners = _head_module_names(model)
    assert trainer.net.training
    assert all(m.training == (n in owners) for n, m in model.named_modules())

    init = _state(pre.out / "best.pt")
    for checkpoint in ("last.pt", "best.pt"):
        probed = _state(probe_cfg.out / checkpoint)
        assert probed.keys() == init.keys()
        head_keys = [k for k in probed if model.is_head_parameter(k)]
        assert head_keys
        for key, value in probed.items():
            if key in head_keys:
                continue
            assert torch.equal(value, init[key]), f"backbone tensor {key} changed"
    last = _state(probe_cfg.out / "last.pt")
    for key in head_keys:
        assert not torch.equal(last[key], init[key]), f"head tensor {key} did not change"

    run = json.loads((probe_cfg.out / "run.json").read_text())
    assert run["train"]["linear_probe"] is True and run["recipe"]["name"] == "linear_probe"
    assert run["train"]["trainable_parameters"] == sum(p.numel() for n, p in model.named_parameters() if model.is_head_parameter(n))
    assert run["init_from"] == str(pre.out)
    # evaluate / export rebuild the whole model from the checkpoint, in eval mode, unfrozen
    loaded, _ = ckpt.load_run(probe_cfg.out)
    assert not loaded.backbone_frozen and not loaded.training


def test_recipe_overrides_the_probe_default(tiny_train, tmp_path):
    trainer = Trainer(tiny_train(linear_probe=True, recipe="finetune_esc50", lr=None))
    assert trainer.recipe.name == "finetune_esc50" and trainer.model.backbone_frozen
    plain = Trainer(tiny_train(out=tmp_path / "plain", lr=None))
    assert plain.recipe.name != "linear_probe" and not plain.model.backbone_frozen


def test_probe_resume_keeps_the_backbone_frozen_and_continues_exactly(tiny_train, tmp_path):
    pre = tiny_train(out=tmp_path / "pre", steps=1, eval_split=None)
    Trainer(pre).fit()
    kw = dict(steps=4, eval_every=2, max_eval_clips=2, init_from=pre.out, linear_probe=True)
    straight = tiny_train(out=tmp_path / "straight", **kw)
    Trainer(straight).fit()
    Trainer(tiny_train(out=tmp_path / "split", stop_at=2, **kw)).fit()

    # the flag must match the run's
    with pytest.raises(TrainError, match="was started with --linear-probe"):
        Trainer(tiny_train(out=tmp_path / "split", resume=True, **{**kw, "linear_probe": False}))
    resumed = Trainer(tiny_train(out=tmp_path / "split", resume=True, **kw))
    assert resumed.step == 2 and resumed.model.backbone_frozen
    resumed.fit()
    a, b = _state(straight.out / "last.pt"), _state(tmp_path / "split" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = _state(pre.out / "best.pt")
    model = resumed.model
    assert all(torch.equal(b[k], init[k]) for k in b if not model.is_head_parameter(k))
    assert any(not torch.equal(b[k], init[k]) for k in b if model.is_head_parameter(k))
