"""Class balance for unbalanced multi-label sets (training/data/balance.py, VATT's loss weights
in training/losses.py): MBT's greedy per-class cap, the inverse-frequency sampler, VATT's
per-batch loss weighting, and `avserve train` / `avserve evaluate` / `avserve data subset`
with them on a multi-label version of the synthetic set."""

import csv
import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avserve.cli import build_app
from training.data.balance import BalancedSampler, cap_per_class, inverse_frequency_weights, label_counts, write_manifest
from training.data.dataset import EpochSampler
from training.data.records import ClipRecord, RecordSet, load_records
from training.losses import label_balance_weights, supervised_loss


def clips(*label_sets: tuple[str, ...], times: int = 1) -> list[ClipRecord]:
    return [ClipRecord(path=Path(f"/clips/{i}.mp4"), labels=labels) for i, labels in enumerate(list(label_sets) * times)]


# ---- the greedy cap -----------------------------------------------------------------------------


def test_cap_keeps_a_clip_only_if_none_of_its_labels_is_full():
    # cap 1: either the two-label clip comes first (it alone is kept) or a one-label clip does
    # (then the two-label clip no longer fits and both one-label clips are kept)
    records = clips(("a", "b"), ("a",), ("b",))
    outcomes = {tuple(str(r.path) for r in cap_per_class(records, 1, seed)) for seed in range(40)}
    assert outcomes == {("/clips/0.mp4",), ("/clips/1.mp4", "/clips/2.mp4")}


def test_cap_counts_on_a_skewed_multilabel_set():
    # 30 speech-only, 10 speech+dog, 5 dog-only, 3 cat-only; cap 8
    records = clips(("speech",), times=30) + clips(("speech", "dog"), times=10) + clips(("dog",), times=5) + clips(("cat",), times=3)
    records = [ClipRecord(path=Path(f"/c/{i}"), labels=r.labels) for i, r in enumerate(records)]
    for seed in range(5):
        kept = cap_per_class(records, 8, seed)
        counts = label_counts(kept)
        assert counts["speech"] == 8  # speech-only clips fit until speech is full: exactly the cap
        assert counts["cat"] == 3  # below the cap: all kept
        # dog: the speech+dog clips that came before speech filled up, then dog-only ones
        dog_only = sum(r.labels == ("dog",) for r in kept)
        assert counts["dog"] <= 8 and (dog_only == 5 or counts["dog"] == 8)
        # greedy: every clip left out has a label that is full
        left_out = set(map(id, records)) - set(map(id, kept))
        assert all(any(counts[label] >= 8 for label in r.labels) for r in records if id(r) in left_out)
        assert [r for r in records if id(r) not in left_out] == kept  # the records' own order
    assert cap_per_class(records, 8, 3) == cap_per_class(records, 8, 3)
    assert cap_per_class(records, 8, 3) != cap_per_class(records, 8, 4)
    assert cap_per_class(records, 100, 0) == records
    with pytest.raises(ValueError):
        cap_per_class(records, 0)


# ---- the balanced sampler ----------------------------------------------------------------------


def test_inverse_frequency_weights_hand_computed():
    # a: 2 clips, b: 1 clip -> weights 1/2, 1/2 + 1/1, normalised
    weights = inverse_frequency_weights(clips(("a",), ("a", "b")))
    assert weights == pytest.approx(np.array([0.5, 1.5]) / 2.0)


def test_balanced_draws_approach_uniform_classes_on_a_skewed_set():
    records = clips(("common",), times=90) + clips(("medium",), times=9) + clips(("rare",))
    labels = [r.labels[0] for r in records]
    sampler = BalancedSampler(inverse_frequency_weights(records), seed=3)
    drawn = Counter()
    for epoch in range(30):  # 3000 draws
        sampler.set_epoch(epoch)
        drawn.update(labels[index] for index, _ in sampler)
    shares = {label: n / sum(drawn.values()) for label, n in drawn.items()}
    assert shares == pytest.approx({"common": 1 / 3, "medium": 1 / 3, "rare": 1 / 3}, abs=0.04)
    # the shuffle it replaces sees the set as it is
    assert Counter(labels)["common"] / len(labels) == 0.9


def test_balanced_sampler_keeps_the_epoch_sampler_contract():
    weights = inverse_frequency_weights(clips(("x",), times=7) + clips(("y",), times=3))
    sampler = BalancedSampler(weights, seed=5)
    sampler.set_epoch(2)
    first = list(sampler)
    assert all(epoch == 2 for _, epoch in first) and len(first) == len(sampler) == 10
    again = BalancedSampler(weights, seed=5)
    again.set_epoch(2)
    assert list(again) == first  # a function of (seed, epoch)
    again.set_epoch(3)
    assert [i for i, _ in again] != [i for i, _ in first]
    # resume part-way: the rest of the same epoch
    sampler.set_epoch(2, skip=4)
    assert list(sampler) == first[4:] and len(sampler) == 6
    # two ranks partition the draw a single process makes (10 clips: no padding)
    ranks = [BalancedSampler(weights, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    shards = [[i for i, _ in r] for r in ranks]
    interleaved = [index for pair in zip(*shards) for index in pair]
    assert interleaved == [i for i, _ in first]
    assert len(ranks[0]) == EpochSampler(10, shuffle=True, num_replicas=2).per_rank


# ---- VATT's loss weights -----------------------------------------------------------------------


def test_label_balance_weights_hand_computed():
    # batch of 3, classes (speech, dog, cat): speech in all three, dog in two, cat in one
    target = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    expected = [(1 / 3 + 1 / 2) / 2, 1 / 3, (1 / 3 + 1 / 2 + 1 / 1) / 3]
    assert label_balance_weights(target).tolist() == pytest.approx(expected)
    # single-label: 1 / (clips of the batch with the same class); a clip without labels weighs 0
    assert label_balance_weights(torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0]])).tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert label_balance_weights(torch.zeros(2, 3)).tolist() == [0.0, 0.0]


def test_weighted_supervised_loss_is_the_mean_of_weighted_clip_losses():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 3.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    weights = label_balance_weights(target)  # 1/2, 1/2, 1
    per_clip = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1)
    total, _ = supervised_loss({"h": logits}, target, ["h"], multilabel=True, weights=weights)
    assert total.item() == pytest.approx((per_clip * torch.tensor([0.5, 0.5, 1.0])).mean().item())
    # only the valid clips of a head count, divided by their number
    valid = {"h": torch.tensor([True, False, True])}
    total, _ = supervised_loss({"h": logits}, target, ["h"], multilabel=True, valid=valid, weights=weights)
    assert total.item() == pytest.approx(((per_clip[0] * 0.5 + per_clip[2]) / 2).item())


# ---- end to end on a multi-label synthetic set ---------------------------------------------------


@pytest.fixture(scope="module")
def multilabel_set(synth_dir, tmp_path_factory) -> Path:
    """The synthetic set relabelled multi-label: each clip carries its sound and its shape
    (4 + 3 classes, two labels a clip), files left where they are."""
    directory = tmp_path_factory.mktemp("multilabel")
    with open(synth_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(directory / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", "split", "modalities"])
        for row in rows:
            labels = f"{row['audio_factor']};{row['video_factor']}"
            writer.writerow([str(synth_dir / row["path"]), labels, row["split"], row["modalities"]])
    return directory


def invoke(*args):
    result = CliRunner().invoke(build_app(), [*map(str, args)])
    return result, result.output


def test_data_subset_writes_a_capped_manifest(multilabel_set, tmp_path):
    source = load_records(multilabel_set)
    result, text = invoke("data", "subset", multilabel_set, "--out", tmp_path / "capped", "--class-cap", "4", "--seed", "1")
    assert result.exit_code == 0, text
    subset = load_records(tmp_path / "capped")
    assert subset.classes == source.classes and subset.multilabel
    train = subset.split("train").records
    assert max(label_counts(train).values()) == 4
    assert train == cap_per_class(source.split("train").records, 4, 1)  # as `train --class-cap 4 --seed 1` uses it
    assert subset.split("test").records == source.split("test").records  # other splits whole
    result, text = invoke("data", "subset", tmp_path / "capped", "--out", tmp_path / "capped", "--class-cap", "2")
    assert result.exit_code == 2 and "holds the dataset's own manifest.csv" in text and "Traceback" not in text
    # what write_manifest writes, read_manifest reads back unchanged (windows, captions, extra columns)
    record = ClipRecord(path=train[0].path, labels=("a", "b"), split="val", start=0.25, end=1.5, modalities="audio",
                        captions=("a dog", "barking"), extra={"source": "x"})  # fmt: skip
    write_manifest(RecordSet([record], ["a", "b", "c"], True, tmp_path), tmp_path / "one")
    again = load_records(tmp_path / "one")
    assert again.records == [record] and again.records[0].extra == {"source": "x"} and again.classes == ["a", "b", "c"]


def test_train_with_class_balancing_then_evaluate_every_route(multilabel_set, tmp_path):
    out = tmp_path / "run"
    result, text = invoke(
        "train", "--model", "zorro_tiny", "--data", multilabel_set, "--out", out, "--steps", "2", "--batch-size", "4",
        "--workers", "0", "--lr", "1e-3", "--no-progress", "--max-eval-clips", "4", "--class-cap", "6",
        "--sampling", "balanced", "--objective-set", "class_balance=true",
    )  # fmt: skip
    assert result.exit_code == 0, text
    run = json.loads((out / "run.json").read_text())
    assert run["multilabel"] and run["objective_options"] == {"class_balance": True}
    assert run["train"]["sampling"] == "balanced" and run["train"]["class_cap"] == 6
    capped = cap_per_class(load_records(multilabel_set).split("train").records, 6, 0)
    assert run["train"]["train_clips"] == len(capped) and f"training on {len(capped)} of" in text
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["loss"]) for row in losses if row["kind"] == "train")

    result, text = invoke("evaluate", "--checkpoint", out, "--data", multilabel_set, "--route", "all")
    assert result.exit_code == 0, text
    assert "AUC" in text and "d-prime" in text
    for route in ("av", "audio", "video"):  # a section per route, its name on its first row
        assert re.search(rf"^. {route} +. head {route if route != 'av' else 'audio'} ", text, re.MULTILINE), text
    result, text = invoke("evaluate", "--checkpoint", out, "--data", multilabel_set, "--route", "all", "--json")
    scores = json.loads(text)
    assert set(scores["routes"]) == {"av", "audio", "video"} and scores["multilabel"]
    for route, routed in scores["routes"].items():
        assert routed["route"] == route
        for metrics in [*routed["heads"].values(), routed["average"]]:
            assert {"top1", "top5", "mAP", "AUC", "d_prime", "num_clips"} <= set(metrics)
            assert 0.0 <= metrics["AUC"] <= 1.0

    # a split with audio-only files: the routes that need video have no clip and are skipped
    records = load_records(multilabel_set)
    audio_only = [replace(r, split="test") for r in records.records if r.modalities == "audio"]
    write_manifest(replace(records, records=audio_only), tmp_path / "audio_only")
    result, text = invoke("evaluate", "--checkpoint", out, "--data", tmp_path / "audio_only", "--route", "all", "--json")
    assert result.exit_code == 0, text
    scores = json.loads(text)
    assert set(scores["routes"]) == {"audio"} and set(scores["skipped"]) == {"av", "video"}
    assert scores["routes"]["audio"]["num_clips"] == len(audio_only)


def test_bad_balancing_options_are_one_line_errors(multilabel_set, tmp_path):
    base = ["train", "--model", "zorro_tiny", "--data", multilabel_set, "--out", tmp_path / "run", "--steps", "1", "--no-progress"]
    result, text = invoke(*base, "--sampling", "uniform")
    assert result.exit_code == 2 and "--sampling must be one of shuffle, balanced" in text and "Traceback" not in text
    result, text = invoke(*base, "--objective-set", "class_balance=3")
    assert result.exit_code == 2 and "class_balance must be true or false" in text


def test_a_balanced_run_resumed_mid_epoch_ends_bit_identical(multilabel_set, tmp_path):
    """Resume skips exactly the balanced draws already trained on (BalancedSampler.set_epoch(epoch, skip))."""
    from training.config import TrainConfig
    from training.trainer import Trainer

    def config(out, **kw):
        return TrainConfig(
            model="zorro_tiny", data=multilabel_set, out=out, steps=3, batch_size=2, lr=1e-3, workers=0, progress=False,
            log_every=1, eval_split=None, class_cap=6, sampling="balanced", objective_options={"class_balance": True}, **kw,
        )  # fmt: skip

    straight = Trainer(config(tmp_path / "straight"))
    assert straight.steps_per_epoch > 3  # the resume below is mid-epoch
    straight.fit()
    Trainer(config(tmp_path / "split", stop_at=1)).fit()
    Trainer(config(tmp_path / "split", resume=True)).fit()
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
