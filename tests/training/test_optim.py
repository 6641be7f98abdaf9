import pytest
import torch

from training.optim import (
    RECIPES,
    Schedule,
    build_optimizer,
    build_scheduler,
    effective_lr,
    parameter_groups,
    resolve_recipe,
    warmup_steps_for,
)


def test_recipes_follow_table5():
    assert (RECIPES["supervised_scratch"].optimizer, RECIPES["supervised_scratch"].lr, RECIPES["supervised_scratch"].weight_decay) == ("adam", 3e-4, 1e-6)
    assert (RECIPES["contrastive"].optimizer, RECIPES["contrastive"].lr) == ("adam", 5e-5)
    ft = RECIPES["finetune"]
    assert (ft.optimizer, ft.lr, ft.momentum, ft.weight_decay) == ("sgd", 0.01, 0.9, 0.0)
    r = resolve_recipe("finetune", lr=0.5, weight_decay=None)
    assert r.lr == 0.5 and r.weight_decay == 0.0
    with pytest.raises(KeyError):
        resolve_recipe("nope")
    assert effective_lr(RECIPES["supervised_scratch"], 512, scale_lr=True) == pytest.approx(6e-4)
    assert effective_lr(RECIPES["supervised_scratch"], 512, scale_lr=False) == pytest.approx(3e-4)


def test_warmup_then_cosine():
    s = Schedule(peak_lr=1.0, total_steps=110, warmup_steps=10)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5)
    assert s(110) == pytest.approx(0.0, abs=1e-12)
    assert warmup_steps_for(RECIPES["mbt"], 1000, 40) == 100  # 2.5 epochs


def test_scheduler_drives_optimizer():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([p], RECIPES["finetune"], 0.1)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    sched = build_scheduler(opt, Schedule(0.1, 4, 2))
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.05])


def _groups_by_parameter(model, extra, recipe, lr=1.0):
    from training.optim import parameter_groups

    groups = parameter_groups(model, extra, recipe, lr)
    names = {id(p): n for n, p in model.named_parameters()}
    for slot, module in extra.items():
        names.update({id(p): f"{slot}.{n}" for n, p in module.named_parameters()})
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert len(by_name) == sum(len(g["params"]) for g in groups) == len(names)  # each parameter once
    return by_name


def test_weight_decay_only_on_linear_and_conv_weights():
    from training.models import create_model

    model = create_model("zorro_tiny")
    groups = _groups_by_parameter(model, {}, resolve_recipe("supervised_scratch", weight_decay=0.05))
    decayed = {n for n, g in groups.items() if g["weight_decay"] == 0.05}
    assert {"layers.0.blocks.shared.attn.qkv.weight", "audio_patch_embed.proj.weight", "classifiers.audio_head.weight"} <= decayed
    for name in ("layers.0.blocks.shared.norm1.weight", "layers.0.blocks.shared.attn.qkv.bias", "audio_pos_embed.embedding",
                 "fusion_tokens", "decoder_queries", "final_norm.shared.weight"):  # fmt: skip
        assert groups[name]["weight_decay"] == 0.0, name
    assert all(g["lr"] == 1.0 for g in groups.values())  # no layer decay in this recipe


@pytest.mark.parametrize("preset, block", [("zorro_tiny", "layers.{}.blocks.shared.mlp.fc1.weight"), ("mbt_tiny", "encoders.audio.{}.mlp.fc1.weight")])
def test_layer_decay_climbs_from_the_embeddings_to_the_heads(preset, block):
    from torch import nn

    from training.models import create_model

    model = create_model(preset)  # depth 4: layer ids 0 (embeddings), 1-4 (blocks), 5 (after the encoder)
    extra = {"decoder": nn.Linear(4, 4)}
    groups = _groups_by_parameter(model, extra, resolve_recipe("finetune", layer_decay=0.5), lr=1.0)
    for index in range(4):
        assert groups[block.format(index)]["lr"] == pytest.approx(0.5 ** (5 - (index + 1))), index
    embedding = "audio_pos_embed.embedding" if preset == "zorro_tiny" else "pos_embed.audio.embedding"
    assert groups[embedding]["lr"] == pytest.approx(0.5**5)
    head = "classifiers.audio_head.weight" if preset == "zorro_tiny" else "classifier.weight"
    assert groups[head]["lr"] == groups["decoder.weight"]["lr"] == 1.0


def test_lr_scale_patterns_name_parameter_groups():
    from training.models import create_model

    recipe = resolve_recipe("finetune", lr_scale=(("*.norm1.*", 0.1), ("classifier.*", 10.0)))
    groups = _groups_by_parameter(create_model("mbt_tiny"), {}, recipe, lr=0.01)
    assert groups["encoders.video.2.norm1.weight"]["lr"] == pytest.approx(0.001)
    assert groups["classifier.bias"]["lr"] == pytest.approx(0.1)
    assert groups["encoders.video.2.norm2.weight"]["lr"] == pytest.approx(0.01)
    # the schedule scales every group by the same factor
    opt = build_optimizer(list({id(g): g for g in groups.values()}.values()), recipe, 0.01)
    sched = build_scheduler(opt, Schedule(0.01, 10, 2))
    before = [g["lr"] for g in opt.param_groups]
    opt.step()
    sched.step()
    ratios = [g["lr"] / b for g, b in zip(opt.param_groups, before)]
    assert max(ratios) == pytest.approx(min(ratios)) and ratios[0] == pytest.approx(2.0)


def test_avmae_finetune_recipe_is_table16():
    r = RECIPES["avmae_finetune"]
    assert (r.optimizer, r.lr, r.momentum, r.layer_decay, r.grad_clip, r.mixup_alpha, r.label_smoothing, r.warmup_epochs) == (
        "sgd", 0.8, 0.9, 0.75, 1.0, 0.5, 0.3, 2.5,
    )  # fmt: skip


def test_linear_probe_recipe_is_vatt_linear_evaluation():
    r = RECIPES["linear_probe"]
    assert (r.optimizer, r.lr, r.weight_decay, r.mixup_alpha, r.label_smoothing) == ("adam", 5e-4, 0.0, 0.0, 0.0)
    assert "VATT App. A.3" in r.source


def test_warmup_then_linear_decay():
    """PEMT App. A.4: warm-up over the first 6 % of iterations, then linear decay."""
    s = Schedule(peak_lr=1.0, total_steps=110, warmup_steps=10, decay="linear")
    assert s(9) == pytest.approx(1.0) and s(10) == pytest.approx(1.0)
    assert s(35) == pytest.approx(0.75) and s(60) == pytest.approx(0.5) and s(110) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="cosine or linear"):
        Schedule(1.0, 10, 0, decay="step")


def test_pemt_recipe_amsgrad_and_orthogonal_lr():
    """AMSGrad AdamW (0.9, 0.98), and the Sigma generators at 1/10 of the LR (App. A.4)."""
    from training.models import create_model

    recipe = RECIPES["pemt"]
    model = create_model("pemt_tiny")
    groups = parameter_groups(model, {}, recipe, recipe.lr)
    optimizer = build_optimizer(groups, recipe, recipe.lr)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(g["amsgrad"] and g["betas"] == (0.9, 0.98) for g in optimizer.param_groups)
    generators = {id(p) for n, p in model.named_parameters() if n.endswith("rotation.generator")}
    assert generators
    for group in groups:
        ids = {id(p) for p in group["params"]}
        if ids & generators:
            assert ids <= generators and group["lr"] == pytest.approx(recipe.lr * 0.1) and group["weight_decay"] == 0.0
        else:
            assert group["lr"] == pytest.approx(recipe.lr)
    assert sum(len({id(p) for p in g["params"]} & generators) for g in groups) == len(generators)
    finetune = parameter_groups(model, {}, RECIPES["pemt_finetune"], 1e-3)
    lr_of = {id(p): g["lr"] for g in finetune for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["heads.fusion.0.weight"])] == pytest.approx(5e-3)
    assert lr_of[id(named["video_cnn.proj.weight"])] == pytest.approx(5e-3)
    assert lr_of[id(named["inputs.video.time"])] == pytest.approx(1e-3)
    assert [lr_of[i] for i in generators] == pytest.approx([1e-4] * len(generators))
