import pytest
import torch

from training.optim import RECIPES, Schedule, build_optimizer, build_scheduler, effective_lr, resolve_recipe, warmup_steps_for


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
