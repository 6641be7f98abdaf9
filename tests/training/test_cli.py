import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avserve.cli import build_app

REPO = Path(__file__).resolve().parents[2]


def run(*args):
    result = CliRunner().invoke(build_app(), ["train", *map(str, args)])
    return result, result.output  # stdout and stderr


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_model", "unknown model 'nope'"),
        ("missing_dataset", "no-such-dir"),
        ("malformed_manifest", "manifest.csv"),
        ("empty_split", "split 'nosuch'"),
        ("bad_set", "key=value"),
        ("bad_field", "bad model config"),
    ],
)
def test_cli_errors_are_one_line_exit_2(case, message, tmp_path, synth_dir):
    base = ["--data", synth_dir, "--out", tmp_path / "run", "--steps", "1", "--no-progress"]
    if case == "unknown_model":
        args = ["--model", "nope", *base]
    elif case == "missing_dataset":
        args = ["--model", "zorro_tiny", "--data", tmp_path / "no-such-dir", "--out", tmp_path / "run"]
    elif case == "malformed_manifest":
        bad = tmp_path / "manifest.csv"
        bad.write_text("this,is\nnot,a manifest\n")
        args = ["--model", "zorro_tiny", "--data", bad, "--out", tmp_path / "run"]
    elif case == "empty_split":
        args = ["--model", "zorro_tiny", *base, "--train-split", "nosuch"]
    elif case == "bad_set":
        args = ["--model", "zorro_tiny", *base, "--set", "depth"]
    else:
        args = ["--model", "zorro_tiny", *base, "--set", "no_such_field=3"]
    result, text = run(*args)
    assert result.exit_code == 2, text
    assert message in text
    assert "Traceback" not in text
    lines = [l for l in text.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1


def test_cli_train_runs(tmp_path, synth_dir):
    result, text = run(
        "--model", "zorro_tiny", "--data", synth_dir / "manifest.csv", "--out", tmp_path / "run", "--steps", "1",
        "--batch-size", "2", "--workers", "0", "--lr", "1e-3", "--no-progress", "--eval-split", "", "--set", "specaug_time_masks=2",
    )  # fmt: skip
    assert result.exit_code == 0, text
    import json

    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["overrides"] == {"specaug_time_masks": 2}
    assert (tmp_path / "run" / "best.pt").is_file()  # no eval split: best = last


def test_torchrun_two_processes(tmp_path, synth_dir):
    """DDP on the CPU (gloo): 2 processes, a few steps, one run directory written by rank 0."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "avserve.cli", "train", "--model", "zorro_tiny", "--data", str(synth_dir), "--out", str(out),
        "--steps", "2", "--batch-size", "2", "--workers", "0", "--lr", "1e-3", "--no-progress", "--log-every", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "eval.json", "last.pt", "metrics.jsonl", "run.json"]
    import json

    import torch

    run = json.loads((out / "run.json").read_text())
    assert run["train"]["world_size"] == 2 and run["train"]["global_batch"] == 4
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 2
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]  # one writer


def test_every_train_config_field_is_an_option():
    """`avserve train` derives its options from TrainConfig: a new field is a new option."""
    import dataclasses

    from training.cli import CLI_ONLY
    from training.config import TrainConfig

    result = CliRunner().invoke(build_app(), ["train", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for field in dataclasses.fields(TrainConfig):
        flags = CLI_ONLY.get(field.name, {}).get("flags") or ("--" + field.name.replace("_", "-"),)
        assert flags[0].split("/")[0] in result.output, field.name


def test_train_needs_the_train_extra_without_torch(tmp_path):
    # sys.modules["torch"] = None makes torch unfindable, as on a gateway-only install.
    code = "import sys; sys.modules['torch'] = None\nfrom avserve.cli import main\nsys.argv = ['avserve', 'train', '--model', 'x']\nmain()\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "avserve train needs the [train] extra" in result.stderr and "Traceback" not in result.stderr
