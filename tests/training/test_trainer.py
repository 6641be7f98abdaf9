import json
from collections import Counter

import numpy as np

import pytest
import torch

from training import checkpoint as ckpt
from training.trainer import TrainError, Trainer


def test_loss_decreases_on_a_tiny_batch(synth_dir):
    """Overfit one fixed batch of 4 real clips with the supervised loss on all four heads."""
    from training.data.dataset import AVClipDataset, Preprocessing, collate
    from training.data.records import load_records
    from training.losses import smooth_targets, supervised_loss
    from training.models import create_model

    torch.manual_seed(0)
    records = load_records(synth_dir)
    model = create_model("zorro_tiny", num_classes=len(records.classes))
    ds = AVClipDataset(records.split("train").records, records.classes, False, Preprocessing.from_config(model.config), train=False, missing="skip")
    batch = collate([ds[i] for i in range(4)])
    target = smooth_targets(batch["target"], len(records.classes))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()  # no SpecAugment: a fixed batch
    losses = []
    for _ in range(12):
        out = model(audio=batch["audio"], video=batch["video"])
        loss, per_head = supervised_loss(out, target, model.head_names, False)
        assert set(per_head) == set(model.head_names)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_supervised_run_writes_checkpoints_metrics_and_eval(tiny_train):
    cfg = tiny_train(steps=3)
    summary = Trainer(cfg).fit()
    out = cfg.out
    for name in ("run.json", "last.pt", "best.pt", "metrics.jsonl", "eval.json"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == "zorro_tiny" and run["objective"] == "supervised" and len(run["classes"]) == 12
    assert run["result"]["clips_per_s"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for key in ("loss", "loss/audio", "loss/video", "loss/fusion", "loss/global", "lr"):
        assert key in train_rows[0]
    assert train_rows[-1]["clips_per_s"] > 0 and 0 <= train_rows[-1]["data_share"] <= 1
    ev = json.loads((out / "eval.json").read_text())["best"]
    assert set(ev["heads"]) == {"audio", "video", "fusion", "global"}
    for metrics in [*ev["heads"].values(), ev["average"]]:
        assert 0 <= metrics["top1"] <= 1 and 0 <= metrics["mAP"] <= 1
    assert summary["steps"] == 3

    # the exporter's entry point: rebuild from run.json + best.pt without the trainer
    model, info = ckpt.load_run(out)
    assert info.classes == run["classes"] and info.step == 3 and not model.training
    state = torch.load(out / "best.pt", weights_only=False)
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())

    # an existing run is not overwritten without --resume
    with pytest.raises(TrainError, match="--resume"):
        Trainer(tiny_train(steps=3))


def test_resume_continues_exactly(tiny_train, tmp_path):
    kw = dict(steps=4, eval_every=2, max_eval_clips=2)
    straight = tiny_train(out=tmp_path / "straight", **kw)
    Trainer(straight).fit()
    split = tiny_train(out=tmp_path / "split", stop_at=2, **kw)
    Trainer(split).fit()
    first = torch.load(split.out / "last.pt", weights_only=False)
    assert first["step"] == 2 and first["optimizer"]["state"]  # Adam moments saved
    resumed = Trainer(tiny_train(out=tmp_path / "split", resume=True, **kw))
    assert resumed.step == 2
    # optimiser state restored
    opt_state = resumed.optimizer.state_dict()["state"]
    assert torch.equal(opt_state[0]["exp_avg"], first["optimizer"]["state"][0]["exp_avg"])
    resumed.fit()
    a = torch.load(straight.out / "last.pt", weights_only=False)
    b = torch.load(split.out / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:  # bit-identical to the uninterrupted run
        assert torch.equal(a["model"][k], b["model"][k]), k
    steps = [json.loads(l)["step"] for l in (split.out / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert steps == [1, 2, 3, 4]


def test_contrastive_then_finetune(tiny_train, tmp_path):
    pre = tiny_train(out=tmp_path / "pre", objective="contrastive", steps=2, max_eval_clips=4)
    Trainer(pre).fit()
    ev = json.loads((pre.out / "eval.json").read_text())["best"]
    assert ev["nce"] > 0 and set(ev) >= {"nce/av", "nce/af", "nce/vf", "retrieval_a2v_top1"}
    state = torch.load(pre.out / "last.pt", weights_only=False)
    assert set(state["modules"]) == {"projectors"}  # the objective's extra module has its own slot
    assert state["modules"]["projectors"] and not any(k.startswith("proj") for k in state["model"])

    ft_cfg = tiny_train(out=tmp_path / "ft", init_from=pre.out, steps=1)
    ft = Trainer(ft_cfg)
    report = ft.init_report
    assert report is not None and len(report.loaded) == len(state["model"]) and not report.unexpected
    assert ft.recipe.name == "finetune" and ft.recipe.optimizer == "sgd"
    pre_best = torch.load(pre.out / "best.pt", weights_only=False)["model"]
    for k, v in ft.model.state_dict().items():
        assert torch.equal(v, pre_best[k]), k
    ft.fit()
    assert (ft_cfg.out / "best.pt").is_file()
    run = json.loads((ft_cfg.out / "run.json").read_text())
    assert run["init_from"] == str(pre.out.resolve()) and run["pretrained"] == "zorro_tiny (contrastive)"

    # resumed without repeating --init-from: the finetuning recipe (whose optimiser state last.pt
    # holds) and the provenance the export reports are the run's, not a fresh run's defaults
    resumed_cfg = tiny_train(out=tmp_path / "ft", resume=True, steps=2)
    resumed = Trainer(resumed_cfg)
    assert resumed.step == 1 and resumed.recipe.name == "finetune"
    resumed.fit()
    run = json.loads((ft_cfg.out / "run.json").read_text())
    assert run["init_from"] == str(pre.out.resolve()) and run["pretrained"] == "zorro_tiny (contrastive)"


def test_init_from_reports_mismatched_heads(tiny_train, tmp_path):
    from training.models import create_model

    src = tmp_path / "five.pt"
    torch.save({"model": create_model("zorro_tiny", num_classes=5).state_dict()}, src)
    trainer = Trainer(tiny_train(out=tmp_path / "x", init_from=src, steps=1))
    assert trainer.init_report.mismatched and not trainer.init_report.unexpected
    assert "shape-mismatched" in trainer.init_report.summary()


def test_load_run_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_run(tmp_path / "nope")
    (tmp_path / "run.json").write_text(json.dumps({"model": "zorro_tiny", "overrides": {}, "classes": ["a", "b"], "multilabel": False}))
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_run(tmp_path)
    (tmp_path / "best.pt").write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_run(tmp_path)


def test_mbt_trains_with_modality_dropout_and_the_mbt_recipe(tiny_train):
    """The second architecture through the same trainer: one "cls" head, mixed batches with the
    unimodal files and dropped modalities, MBT's recipe (SGD, modality mixup)."""
    # The test split holds all three kinds of clip (the val split of this small set has no
    # unimodal file), so evaluation has each kind to score.
    cfg = tiny_train(model="mbt_tiny", steps=4, modality_dropout=0.5, recipe="mbt", lr=0.01, batch_size=8, eval_split="test", max_eval_clips=None)
    trainer = Trainer(cfg)
    trainer.fit()
    run = json.loads((cfg.out / "run.json").read_text())
    assert run["train"]["modality_dropout"] == 0.5 and run["recipe"]["modality_mixup"] is True
    # MBT's recipe is synchronous SGD with momentum 0.9 (MBT B3): the optimiser that ran, not
    # only the recipe's record.
    assert run["recipe"]["optimizer"] == "sgd"
    assert type(trainer.optimizer) is torch.optim.SGD
    assert [group["momentum"] for group in trainer.optimizer.param_groups] == [0.9] * len(trainer.optimizer.param_groups)
    rows = [json.loads(line) for line in (cfg.out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert {"loss", "loss/cls", "mixup_lambda", "modality_dropped"} <= set(train_rows[0])
    assert sum(r["modality_dropped"] for r in train_rows) > 0
    ev = json.loads((cfg.out / "eval.json").read_text())["best"]
    assert set(ev["heads"]) == {"cls"}
    # every kind of clip in the eval split is scored, each clip once: MBT serves unimodal clips too
    from training.data.records import load_records

    kinds = Counter(r.modalities or "audio+video" for r in load_records(cfg.data).split("test").records)
    assert set(kinds) == {"audio+video", "audio", "video"}
    assert {kind: metrics["num_clips"] for kind, metrics in ev["by_modalities"].items()} == dict(kinds)


def test_modality_dropout_is_validated(tiny_train):
    with pytest.raises(TrainError, match="modality-dropout"):
        Trainer(tiny_train(modality_dropout=1.0))
    with pytest.raises(TrainError, match="does not apply to the contrastive objective"):
        Trainer(tiny_train(modality_dropout=0.2, objective="contrastive"))


def test_evaluate_a_single_route_on_every_clip_that_has_its_inputs(tiny_train, synth_dir):
    from training.data.records import load_records
    from training.evaluate import evaluate_run, run_outputs

    cfg = tiny_train(steps=2, eval_split=None)
    Trainer(cfg).fit()
    test = load_records(synth_dir).split("test").records
    with_audio = [r for r in test if "audio" in (r.modalities or "audio+video")]
    result = evaluate_run(cfg.out, synth_dir, split="test", route="audio")
    assert result["route"] == "audio" and result["num_clips"] == len(with_audio)
    assert set(result["heads"]) == {"audio"}  # Zorro's audio graph: the audio head only
    assert set(result["by_modalities"]) == {"audio"}
    both = evaluate_run(cfg.out, synth_dir, split="test", route="av")
    assert set(both["by_modalities"]) == {"audio+video"}
    with pytest.raises(ValueError, match="route"):
        evaluate_run(cfg.out, synth_dir, split="test", route="text")

    # zero-filled: the audio+video model on the same clips with zeros for video (all four heads)
    model, _, alone = run_outputs(cfg.out, synth_dir, split="test", route="audio")
    _, _, zeros = run_outputs(cfg.out, synth_dir, split="test", route="audio", zero_fill=True)
    assert set(alone.logits) == {"audio", "logits"} and set(zeros.logits) == {*model.head_names, "logits"}
    np.testing.assert_array_equal(zeros.logits["audio"], alone.logits["audio"])  # Zorro's audio head is pure
    assert not np.allclose(zeros.logits["logits"], alone.logits["logits"])
    assert not zeros.has_video.any()


def test_a_recipe_with_layer_decay_and_gradient_clipping(tiny_train):
    cfg = tiny_train(model="mbt_tiny", steps=2, recipe="avmae_finetune", lr=0.01, eval_split=None)
    trainer = Trainer(cfg)
    lrs = sorted({g["initial_lr"] for g in trainer.optimizer.param_groups})  # before the warm-up factor
    assert lrs[-1] == pytest.approx(0.01) and lrs[0] == pytest.approx(0.01 * 0.75**5)  # depth 4: ids 0..5
    trainer.fit()
    rows = [json.loads(line) for line in (cfg.out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 for r in rows if r["kind"] == "train")
    run = json.loads((cfg.out / "run.json").read_text())
    assert run["recipe"]["layer_decay"] == 0.75 and run["recipe"]["grad_clip"] == 1.0
    assert {g["weight_decay"] for g in run["train"]["optimizer_groups"]} == {0.0}  # the recipe has none


def test_the_trainer_gives_text_to_both_datasets_only_when_the_objective_asks(tiny_train, monkeypatch, tmp_path):
    from training.data.text import TextSpec
    from training.objectives import get_objective

    plain = Trainer(tiny_train(out=tmp_path / "plain"))
    assert plain.train_set.text is None and plain.eval_set.text is None
    assert "text" not in plain.train_set[(0, 0)]

    spec = TextSpec(max_words=12, max_captions=4)
    monkeypatch.setattr(get_objective("supervised"), "text_input", spec)
    trainer = Trainer(tiny_train(out=tmp_path / "text"))
    assert trainer.train_set.text == spec and trainer.eval_set.text == spec
    item = trainer.eval_set[0]
    assert item["text"].shape == (4, 12) and item["text_mask"].shape == (4,) and "has_text" in item
