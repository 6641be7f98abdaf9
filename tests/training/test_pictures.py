"""Reconstruction pictures (training/pictures.py): what a masked run draws after training and on
demand, and that the panels show what the objective computed."""

from __future__ import annotations

import torch
from PIL import Image
from typer.testing import CliRunner

from training.models import AUDIO, VIDEO
from training.pictures import reconstructed_patches
from training.trainer import Trainer


def test_the_panels_are_the_objective_s_own_tensors():
    torch.manual_seed(0)
    target = torch.randn(2, 6, 4) * 3 + 5
    prediction = torch.randn(2, 6, 4)
    keep = torch.tensor([[0, 3], [1, 2]])
    outputs = {"predictions": {AUDIO: prediction}, "targets": {AUDIO: target}, "keep": {AUDIO: keep}}
    panel = reconstructed_patches(outputs, norm_targets=True)[AUDIO]
    hidden = panel["hidden"]
    assert hidden.sum() == 8 and not hidden[0, 0] and not hidden[0, 3] and hidden[0, 1]
    assert torch.isnan(panel["masked"][hidden]).all() and torch.equal(panel["masked"][~hidden], target[~hidden])
    # visible patches are shown as they were; hidden ones are the prediction at the true patch's
    # mean and spread (the prediction is in per-patch standardised units)
    assert torch.equal(panel["reconstruction"][~hidden], target[~hidden])
    mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(panel["reconstruction"][hidden], (prediction * std + mean)[hidden])
    raw = reconstructed_patches(outputs, norm_targets=False)[AUDIO]
    assert torch.equal(raw["reconstruction"][hidden], prediction[hidden])


def test_a_masked_run_draws_its_reconstructions_and_avserve_pictures_redraws_them(tiny_train, synth_dir, tmp_path, capsys):
    from avserve.cli import build_app

    cfg = tiny_train(model="avmae_tiny", objective="masked", steps=1, out=tmp_path / "mae")
    Trainer(cfg).fit()
    drawn = sorted(p.name for p in (cfg.out / "pictures").iterdir())
    assert len(drawn) == 8 and {n.rsplit("_", 1)[1] for n in drawn} == {"audio.png", "video.png"}
    for name in drawn:
        with Image.open(cfg.out / "pictures" / name) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 300
    logged = capsys.readouterr()
    assert f"pictures: 8 files in {cfg.out / 'pictures'}" in logged.out + logged.err

    out = tmp_path / "drawn"
    result = CliRunner().invoke(
        build_app(), ["pictures", "--checkpoint", str(cfg.out), "--data", str(synth_dir), "--split", "test", "--clips", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert len(result.output.split()) == 4 and sorted(p.suffix for p in out.iterdir()) == [".png"] * 4

    # the same clip and checkpoint draw the same picture (evaluation masks are seeded per clip)
    again = tmp_path / "again"
    CliRunner().invoke(build_app(), ["pictures", "--checkpoint", str(cfg.out), "--data", str(synth_dir), "--split", "test",
                                     "--clips", "2", "--out", str(again)])  # fmt: skip
    for path in out.iterdir():
        assert path.read_bytes() == (again / path.name).read_bytes(), path.name


def test_a_run_without_reconstructions_is_refused_clearly(tiny_train, synth_dir, tmp_path):
    from avserve.cli import build_app

    cfg = tiny_train(steps=1, out=tmp_path / "supervised")
    Trainer(cfg).fit()
    assert not (cfg.out / "pictures").exists()  # the supervised objective draws nothing
    result = CliRunner().invoke(build_app(), ["pictures", "--checkpoint", str(cfg.out), "--data", str(synth_dir), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "no reconstructions to draw" in result.output
    assert not (tmp_path / "x").exists()
