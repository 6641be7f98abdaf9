"""Multi-view evaluation (`avserve evaluate --views T,S`): temporal windows x spatial crops, the
views' logits averaged per clip (avserve/views.py, training/data/views.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from avserve.views import ViewGrid, average_logits, spatial_offsets, temporal_starts, view_probabilities

LEGACY_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "zorro_supervised"  # a zorro_tiny of 0.5-s windows


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory) -> Path:
    """Synthetic clips of 4 s (several of the model's windows), the classes the legacy run knows."""
    from training.data.synth import SynthConfig, generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("long"), clips=10, seed=3, config=SynthConfig(clip_seconds=4.0), progress=False)


def rewrite_manifest(manifest: Path, out: Path, **columns) -> Path:
    """The manifest with every row's `columns` replaced (paths made absolute)."""
    with manifest.open(newline="") as source:
        rows = list(csv.DictReader(line for line in source if not line.startswith("#")))
    out.mkdir(parents=True, exist_ok=True)
    with (out / "manifest.csv").open("w", newline="") as sink:
        writer = csv.DictWriter(sink, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "path": str((manifest.parent / row["path"]).resolve()), **columns})
    if (manifest.parent / "classes.txt").exists():
        (out / "classes.txt").write_text((manifest.parent / "classes.txt").read_text())
    return out


def test_view_grid_parsing_and_layout():
    assert ViewGrid.parse("4,3") == ViewGrid(4, 3) and ViewGrid.parse("4x3").count == 12
    assert ViewGrid.parse("4") == ViewGrid(4, 1) and str(ViewGrid(4, 1)) == "4x1"
    for bad in ("", "a,b", "4,3,2", "0,1", "4,2"):
        with pytest.raises(ValueError):
            ViewGrid.parse(bad)
    assert temporal_starts(0.0, 10.0, 2.0, 1) == [4.0]  # one view: the centred window
    assert temporal_starts(0.0, 10.0, 2.0, 4) == pytest.approx([0.0, 8 / 3, 16 / 3, 8.0])  # VATT: uniformly covering
    assert temporal_starts(5.0, 6.0, 2.0, 3) == [5.0, 5.0, 5.0]  # shorter than the window: padded, as in training
    assert spatial_offsets(100, 64, 1) == [18] and spatial_offsets(100, 64, 3) == [0, 18, 36]
    with pytest.raises(ValueError):
        spatial_offsets(60, 64, 1)
    views = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert average_logits(views).tolist() == [1.0, 1.0, 1.0]
    assert view_probabilities(views) == pytest.approx([1 / 3] * 3)  # the mean logits' softmax, not the mean softmax


def test_one_view_is_todays_evaluation(long_clips):
    from training.evaluate import evaluate_run

    data = long_clips.parent
    single = evaluate_run(LEGACY_RUN, data, split="train")
    one_view = evaluate_run(LEGACY_RUN, data, split="train", views=ViewGrid(1, 1))
    assert one_view["views"] == "1x1" and single["views"] == "1x1"
    for key in ("num_clips", "heads", "average", "by_modalities"):
        assert one_view[key] == single[key], key


def test_temporal_views_average_the_logits_of_the_windows_they_cover(long_clips, tmp_path):
    """Two views of a 4-s span are its first and last model windows: their single-view logits,
    scored separately from manifests that cut the clips there, average to the two-view logits."""
    from training.checkpoint import load_run
    from training.evaluate import run_outputs

    window = load_run(LEGACY_RUN)[0].config.clip_seconds
    starts = temporal_starts(0.0, 4.0, window, 2)
    assert starts == [0.0, 4.0 - window]
    # The span is the manifest's [0, 4] (a file's own duration is a little longer: codec padding).
    whole = rewrite_manifest(long_clips, tmp_path / "whole", start=0, end=4)
    ends = [run_outputs(LEGACY_RUN, rewrite_manifest(long_clips, tmp_path / f"w{s}", start=s, end=s + window), "train")[2] for s in starts]
    _, _, two = run_outputs(LEGACY_RUN, whole, "train", views=ViewGrid(2, 1))
    for output in two.logits:
        expected = (ends[0].logits[output].astype(np.float64) + ends[1].logits[output]) / 2
        np.testing.assert_allclose(two.logits[output], expected, rtol=0, atol=1e-6, err_msg=output)
    assert not np.allclose(ends[0].logits["logits"], ends[1].logits["logits"], atol=1e-4)  # the windows differ
    np.testing.assert_array_equal(two.target, ends[0].target)


def test_spatial_crops_slide_along_the_longer_side(long_clips):
    from training.checkpoint import load_run
    from training.data.dataset import AVClipDataset, Preprocessing
    from training.data.records import load_records
    from training.data.views import MultiViewDataset
    from training.evaluate import batch_logits, flatten_views

    from avserve.media import probe

    model, info = load_run(LEGACY_RUN)
    records = [r for r in load_records(long_clips).split("train").records if (r.modalities or "audio+video") == "audio+video"]
    base = AVClipDataset(records, info.classes, False, Preprocessing.from_config(model.config), train=False)
    views = MultiViewDataset(base, ViewGrid(2, 3))
    seen_wide = seen_square = False
    for index in range(len(base)):
        item, single = views[index], base[index]
        assert item["video"].shape == (6, *single["video"].shape) and item["audio"].shape == (6, *single["audio"].shape)
        assert item["num_views"] == 6 and item["target"] == single["target"]
        assert item["has_audio"] == single["has_audio"] and item["has_video"] == single["has_video"]
        for window in range(2):  # crops of a window share its audio
            crops = item["audio"][3 * window : 3 * window + 3]
            assert torch.equal(crops[0], crops[1]) and torch.equal(crops[0], crops[2])
        # the centre crop is single-view evaluation's centre square, up to resampling
        # (a rectangle resized then cut, against a square cut by the decoder)
        first = MultiViewDataset(base, ViewGrid(1, 3))[index]["video"]
        assert (first[1].float() - single["video"].float()).abs().mean() < 4.0
        stream = probe(str(base.records[index].path)).video
        left, centre, right = first
        if stream.display_width == stream.display_height:
            seen_square = True
            assert torch.equal(left, centre) and torch.equal(centre, right)
        else:
            seen_wide = True
            assert not torch.equal(left, right)
    assert seen_wide and seen_square

    # collect_outputs' averaging: a clip's outputs are the mean of its six views' logits
    batch = torch.utils.data.default_collate([views[0], views[1]])
    flat = flatten_views(batch, 6)
    per_view = batch_logits(model, flat, torch.device("cpu"))["logits"].reshape(2, 6, -1)
    from training.evaluate import collect_outputs

    collected = collect_outputs(model, [batch], torch.device("cpu"))
    np.testing.assert_allclose(collected.logits["logits"], per_view.astype(np.float64).mean(1), rtol=0, atol=1e-6)


def test_evaluate_command_takes_views(long_clips):
    import json

    from typer.testing import CliRunner

    from avserve.cli import build_app

    runner, app = CliRunner(), build_app()
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(LEGACY_RUN), "--data", str(long_clips.parent),
                                 "--split", "train", "--views", "2,3", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["views"] == "2x3" and body["num_clips"] > 0 and "average" in body
    bad = runner.invoke(app, ["evaluate", "--checkpoint", str(LEGACY_RUN), "--data", str(long_clips.parent), "--views", "4,2"])
    assert bad.exit_code == 2 and "--views" in bad.output and "Traceback" not in bad.output
