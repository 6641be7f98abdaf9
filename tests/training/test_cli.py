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
    """DDP on the CPU (gloo): 2 processes, a few steps, one run directory written by rank 0, and
    the ranks really train one model: with gradients averaged over the ranks, 2 processes x 2
    clips are the single-process run on the same 4 clips per step, not each rank training on
    its own 2."""
    import json

    import torch

    # Every draw that could differ between the ranks and one process is kept out: the model's own
    # augmentations (SpecAugment, Zorro's frequency jitter) use per-rank seeds, so they are off
    # (the data pipeline's draws are per (seed, epoch, clip), the same either way). Unimodal
    # clips are skipped, so each head's loss is a mean over all of a rank's clips (and per-rank
    # means of equal counts average to the global mean). SGD (the finetune recipe) keeps the
    # update linear in the gradient, and no warm-up makes the first step count.
    same = [
        "--model", "zorro_tiny", "--data", str(synth_dir), "--steps", "2", "--workers", "0", "--no-progress",
        "--log-every", "1", "--recipe", "finetune", "--lr", "0.01", "--warmup-steps", "0", "--missing", "skip",
        "--set", "specaug_time_masks=0", "--set", "specaug_freq_masks=0", "--set", "freq_jitter_bins=0",
    ]  # fmt: skip
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "avserve.cli", "train", *same, "--batch-size", "2", "--out", str(out),
    ]  # fmt: skip
    pythonpath = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(pythonpath)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "eval.json", "last.pt", "metrics.jsonl", "run.json"]

    run_info = json.loads((out / "run.json").read_text())
    assert run_info["train"]["world_size"] == 2 and run_info["train"]["global_batch"] == 4
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 2
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]  # one writer

    def single_process(batch_size: int, name: str):
        result, text = run(*same, "--batch-size", batch_size, "--out", tmp_path / name)
        assert result.exit_code == 0, text
        weights = torch.load(tmp_path / name / "last.pt", weights_only=False)["model"]
        metrics = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return weights, [r["loss"] for r in metrics if r["kind"] == "train"]

    def largest_difference(a, b) -> float:
        assert a.keys() == b.keys()
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())

    ddp_weights = torch.load(out / "last.pt", weights_only=False)["model"]
    ddp_losses = [r["loss"] for r in rows if r["kind"] == "train"]  # the mean over the ranks
    full_weights, full_losses = single_process(4, "one_process_4_clips")  # the same 4 clips per step
    half_weights, half_losses = single_process(2, "one_process_2_clips")  # half of them
    # Measured: 4e-9 between DDP and the full batch (summation order), 9e-4 to the half batch.
    to_full, to_half = largest_difference(ddp_weights, full_weights), largest_difference(ddp_weights, half_weights)
    assert to_full < 1e-6, f"rank 0's weights are not the 4-clip single-process run's: max difference {to_full:g}"
    assert to_half > 1e-4, f"the 2-clip run is as close as the 4-clip run: {to_half:g}"
    # Rank 1 is not saved, but step 2's loss (the mean of both ranks') is computed with each
    # rank's weights after step 1: it is the single-process loss only if rank 1 had them too.
    # Measured: 1e-7 from the full batch's (the float32 losses' last bits), 7e-4 from the half
    # batch's; 6e-5 when the ranks train independently.
    assert ddp_losses == pytest.approx(full_losses, abs=2e-6, rel=0)
    assert ddp_losses[1] != pytest.approx(half_losses[1], abs=1e-4, rel=0)


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
