"""`avserve data synth` and `avserve data info` drive the generator and the readers as the CLI calls them."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from avserve.cli import build_app


def test_data_synth_then_info(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    runner = CliRunner()
    result = runner.invoke(
        build_app(), ["data", "synth", "--out", str(out), "--clips", "12", "--seed", "3", "--clip-seconds", "0.5", "--unimodal-fraction", "0.25"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'manifest.csv'}" in result.output
    assert len(list((out / "av").iterdir())) == 12
    assert len(list((out / "audio_only").iterdir())) == len(list((out / "video_only").iterdir())) == 3

    info = runner.invoke(build_app(), ["data", "info", str(out)])
    assert info.exit_code == 0, info.output
    assert "18 clips, 12 classes, single-label" in info.output
    assert "audio+video 12, audio 3, video 3" in info.output


def test_data_info_reports_dataset_errors(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("path,label\nmissing.mp4,dog\n", encoding="utf-8")
    result = CliRunner().invoke(build_app(), ["data", "info", str(tmp_path)])
    assert result.exit_code == 2
    assert "manifest.csv:2: file not found: 'missing.mp4'" in result.output
