"""Issue 13 item 8, "Nothing lost in training": `avserve train` SIGKILLed at random moments, some
of them in the middle of a checkpoint write, and resumed with --resume each time, finishes
bit-identical to an uninterrupted run, with the same metrics.jsonl (each row once) and no
temporary file left. The failure modes a kill can leave behind are also set up one by one
in-process below (best.pt behind last.pt, rows logged after the checkpoint, a torn last row,
stale NAME.tmp files, a kill before the first checkpoint), where no timing is involved.

The subprocess test takes 50 s on two quiet cores (two minutes when colleagues load them):
every launch pays ~6 s of imports, so the model, the dataset and the run are as small as
they go.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sigkill import kill_when, launch

from training import checkpoint as ckpt
from training.trainer import TrainConfig, TrainError, Trainer

STEPS = 14
TIMING = {"clips_per_s", "data_share"}  # the only columns allowed to differ between runs
# a zorro_tiny cut down further: each step is data decoding more than compute
MODEL = ["--model", "zorro_tiny", "--set", "dim=32", "--set", "depth=2", "--set", "num_heads=2", "--set", "n_fusion=2",
         "--set", "decoder_qk_dim=16", "--set", "decoder_v_dim=16"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """12 audio+video clips (+ a few unimodal): 4 steps of 2 clips per epoch, so the run
    crosses epoch boundaries and resumes mid-epoch."""
    from training.data.synth import generate_dataset

    return Path(generate_dataset(tmp_path_factory.mktemp("kill-data"), clips=12, seed=0, progress=False)).parent


def train_command(data: Path, out: Path, resume: bool) -> list[str]:
    return [
        sys.executable, "-m", "avserve.cli", "train", *MODEL, "--data", str(data), "--out", str(out),
        "--steps", str(STEPS), "--batch-size", "2", "--lr", "1e-3", "--eval-every", "1", "--log-every", "1",
        "--max-eval-clips", "2", "--workers", "0", "--no-progress", *(["--resume"] if resume else []),
    ]  # fmt: skip


def appearances(path: Path, count: int):
    """A condition true once `path` has appeared `count` times (a checkpoint's NAME.tmp: the
    kill then lands while it is being written)."""
    state = {"seen": 0, "present": path.exists()}  # one a killed launch left is not an appearance

    def condition() -> bool:
        present = path.exists()
        if present and not state["present"]:
            state["seen"] += 1
        state["present"] = present
        return state["seen"] >= count

    return condition


def after_start(run_json: Path, launched_ns: int, delay: float):
    """A condition true `delay` seconds after this process wrote run.json (the loop's start)."""
    started = {}

    def condition() -> bool:
        if "at" not in started:
            try:
                if run_json.stat().st_mtime_ns >= launched_ns:
                    started["at"] = time.monotonic()
            except FileNotFoundError:
                pass
            return False
        return time.monotonic() - started["at"] >= delay

    return condition


def identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / ckpt.METRICS_FILE).read_text().splitlines()]


def without_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


def resumed_at(log: Path) -> int | None:
    """The step a launch said it resumed from (0: started over), None if it never got that far."""
    text = log.read_text()
    if "starting at step 0" in text:
        return 0
    for line in text.splitlines():
        if line.startswith("resumed ") and " at step " in line:
            return int(line.split(" at step ")[1].split("/")[0])
    return None


def test_sigkill_at_random_moments_then_resume_finishes_identical(tiny_data, tmp_path):
    started = time.monotonic()
    # the uninterrupted run, in this process (no second start-up to pay): the same TrainConfig
    # the command line builds, so the same bits
    reference = tmp_path / "straight"
    Trainer(TrainConfig(
        model="zorro_tiny", overrides={"dim": 32, "depth": 2, "num_heads": 2, "n_fusion": 2, "decoder_qk_dim": 16, "decoder_v_dim": 16},
        data=tiny_data, out=reference, steps=STEPS, batch_size=2, lr=1e-3, eval_every=1, log_every=1, max_eval_clips=2,
        workers=0, progress=False,
    )).fit()  # fmt: skip

    # seconds per step (data, step, evaluation, checkpoint) on this machine right now
    result = json.loads((reference / ckpt.RUN_FILE).read_text())["result"]
    step_seconds = result["train_seconds"] / (STEPS - 1)  # the first step is not timed

    run = tmp_path / "killed"
    # The kill moments, seeded so a failure replays: "tmp k" = while the k-th checkpoint this
    # launch writes is being written (its last.pt.tmp exists), "fit x" = x steps' time into
    # the loop (anywhere in a step, its evaluation or its checkpoint), "launch t" = t s after
    # the process started (imports, set-up, or early in the loop). Each kill lets the run
    # advance by at most ~4 steps, so all of them land before it finishes.
    rng = random.Random(8)
    plan = [("tmp", 1)]  # during step 1's checkpoint write: there is nothing to resume from yet
    for kind in rng.sample(["launch", "tmp", "fit", "tmp", "fit"], 5):
        plan.append((kind, {"launch": rng.uniform(0.5, 6.0), "fit": rng.uniform(0.5, 4.0), "tmp": rng.randint(2, 3)}[kind]))
    kills, mid_write, launches = [], 0, 0
    last_step = 0  # the step of the intact last.pt the next launch must resume from
    while plan or mid_write < 2:
        kind, value = plan.pop(0) if plan else ("tmp", 1)  # until two kills fell inside a write
        if len(kills) >= 12:
            break
        log = tmp_path / f"launch-{launches}.log"
        launched_ns = time.time_ns() - 10_000_000  # file times are coarser than the clock
        stale_tmp = identity(run / (ckpt.LAST + ckpt.TEMP_SUFFIX))  # a killed launch's, if any
        proc = launch(train_command(tiny_data, run, resume=launches > 0), log)
        launches += 1
        if kind == "tmp":
            condition = appearances(run / (ckpt.LAST + ckpt.TEMP_SUFFIX), value)
        elif kind == "fit":
            condition = after_start(run / ckpt.RUN_FILE, launched_ns, value * step_seconds)
        else:
            t0 = time.monotonic()
            condition = lambda t0=t0, value=value: time.monotonic() - t0 >= value  # noqa: E731
        if not kill_when(proc, condition):
            assert proc.returncode == 0, log.read_text()
            break  # finished before the planned moment
        said = resumed_at(log)
        assert said in (None, last_step), f"launch {launches - 1} resumed at {said}, the intact last.pt was {last_step}"
        # inside a write: this launch's last.pt.tmp is there (not the one a previous kill left)
        torn = identity(run / (ckpt.LAST + ckpt.TEMP_SUFFIX)) not in (None, stale_tmp)
        mid_write += torn
        # what the kill left: last.pt (if any) is a complete checkpoint
        if (run / ckpt.LAST).exists():
            last_step = int(ckpt.load_checkpoint(run / ckpt.LAST)["step"])
        kills.append((kind, round(value, 2) if isinstance(value, float) else value, last_step, torn))
    print(f"\nkills (kind, moment, last.pt step after, inside a write): {kills}")
    assert len(kills) >= 5, kills
    assert mid_write >= 2, f"fewer than two kills landed inside a checkpoint write: {kills}"

    log = tmp_path / "final.log"
    proc = launch(train_command(tiny_data, run, resume=True), log)
    assert proc.wait(timeout=300) == 0, log.read_text()
    assert resumed_at(log) == last_step, log.read_text()

    # bit-identical to the uninterrupted run: last.pt and best.pt, weights and training state
    for name in (ckpt.LAST, ckpt.BEST):
        want, got = (torch.load(r / name, weights_only=False) for r in (reference, run))
        assert got["step"] == want["step"] == STEPS and got["best_step"] == want["best_step"], name
        for key, tensor in want["model"].items():
            assert torch.equal(tensor, got["model"][key]), f"{name}: {key}"
        for slot, state in want[ckpt.MODULES].items():
            for key, tensor in state.items():
                assert torch.equal(tensor, got[ckpt.MODULES][slot][key]), f"{name}: {slot}.{key}"
        for index, moments in want["optimizer"]["state"].items():
            for key, value in moments.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(got["optimizer"]["state"][index][key])), name
    # the same log, each row once, nothing torn
    want_rows, got_rows = rows(reference), rows(run)
    assert [r["step"] for r in got_rows if r["kind"] == "train"] == list(range(1, STEPS + 1))
    assert [r["step"] for r in got_rows if r["kind"] == "eval"] == list(range(1, STEPS + 1))
    assert [without_timing(r) for r in got_rows] == [without_timing(r) for r in want_rows]
    assert json.loads((run / ckpt.EVAL_FILE).read_text()) == json.loads((reference / ckpt.EVAL_FILE).read_text())
    info = json.loads((run / ckpt.RUN_FILE).read_text())
    assert info["result"]["steps"] == STEPS and info["result"]["clips_per_s"] > 0
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert not list(run.glob("*" + ckpt.TEMP_SUFFIX))
    print(f"{len(kills)} kills, {mid_write} inside a checkpoint write, {launches + 1} launches, {time.monotonic() - started:.0f} s")


# ---- each failure mode on its own, in-process --------------------------------------------------


@pytest.fixture()
def small(tiny_train, tmp_path):
    def make(**kw):
        base = dict(out=tmp_path / "run", steps=4, eval_every=1, max_eval_clips=2, log_every=1)
        return tiny_train(**{**base, **kw})

    return make


def test_killed_before_the_first_checkpoint_resume_starts_over(small, capsys):
    cfg = small(resume=True)
    out = Path(cfg.out)
    out.mkdir()
    # what a kill during step 1's checkpoint leaves: run.json, step 1's rows, eval.json, a torn last.pt.tmp
    ckpt.write_json(out / ckpt.RUN_FILE, {"model": "zorro_tiny", "overrides": {}, "classes": [], "multilabel": False})
    (out / ckpt.METRICS_FILE).write_text('{"kind": "train", "step": 1, "loss": 1.0}\n{"kind": "eval", "step": 1}\n')
    (out / ckpt.EVAL_FILE).write_text("{}")
    (out / (ckpt.LAST + ckpt.TEMP_SUFFIX)).write_bytes(b"PK\x03\x04 half a zip")
    trainer = Trainer(cfg)
    assert trainer.step == 0
    trainer.fit()
    assert "starting at step 0" in capsys.readouterr().err
    assert [(r["kind"], r["step"]) for r in rows(out)] == [(k, s) for s in range(1, 5) for k in ("train", "eval")]
    assert not list(out.glob("*.tmp"))
    # a directory holding best.pt without last.pt is not a trainer's state: refused
    (out / ckpt.LAST).unlink()
    with pytest.raises(TrainError, match="no last.pt"):
        Trainer(small(resume=True))


def test_resume_repairs_what_a_kill_between_checkpoint_files_leaves(small, tmp_path):
    straight = small(out=tmp_path / "straight")
    Trainer(straight).fit()

    cfg = small(stop_at=2)
    Trainer(cfg).fit()
    out = Path(cfg.out)
    step2 = (out / ckpt.LAST).read_bytes()
    # step 3 ran: its rows and eval.json were written, last.pt (step 3, the best) was renamed
    # in, then the kill came before best.pt followed; step 4's train row was half written
    Trainer(small(resume=True, stop_at=3)).fit()
    assert torch.load(out / ckpt.BEST, weights_only=False)["best_step"] == 3
    (out / ckpt.BEST).unlink()
    (out / ckpt.BEST).write_bytes(step2)  # best.pt one checkpoint behind (a separate file)
    with (out / ckpt.METRICS_FILE).open("a") as log:
        log.write('{"kind": "train", "step": 4, "loss": 0.')
    (out / (ckpt.BEST + ckpt.TEMP_SUFFIX)).write_bytes(b"half")
    (out / (ckpt.EVAL_FILE + ckpt.TEMP_SUFFIX)).write_text("{")

    resumed = Trainer(small(resume=True))
    assert resumed.step == 3
    resumed.fit()
    for name in (ckpt.LAST, ckpt.BEST):
        want, got = (torch.load(r / name, weights_only=False) for r in (straight.out, out))
        assert got["step"] == want["step"] and got["best_step"] == want["best_step"], name
        assert all(torch.equal(v, got["model"][k]) for k, v in want["model"].items()), name
    assert [without_timing(r) for r in rows(out)] == [without_timing(r) for r in rows(straight.out)]
    assert json.loads((out / ckpt.EVAL_FILE).read_text()) == json.loads((straight.out / ckpt.EVAL_FILE).read_text())
    assert not list(out.glob("*.tmp"))


def test_best_pt_behind_last_pt_is_relinked_on_resume(small):
    cfg = small(stop_at=3)
    Trainer(cfg).fit()
    out = Path(cfg.out)
    state = torch.load(out / ckpt.LAST, weights_only=False)
    assert state["best_step"] == 3 and ckpt.same_file(out / ckpt.LAST, out / ckpt.BEST)  # a hard link, not a second write
    older = {**state, "step": 2}
    (out / ckpt.BEST).unlink()
    ckpt.save_checkpoint(out / ckpt.BEST, older)
    Trainer(small(resume=True, stop_at=3)).fit()  # nothing to train: only the repair
    assert torch.load(out / ckpt.BEST, weights_only=False)["step"] == 3


def test_a_log_window_in_progress_survives_the_kill(small, tmp_path, monkeypatch):
    """log_every=3 with a checkpoint every step, killed after step 2's checkpoint: the line of
    steps 1-3 averages losses from before and after the kill, and equals the uninterrupted run's."""
    straight = small(out=tmp_path / "straight", steps=6, log_every=3)
    Trainer(straight).fit()

    class Killed(BaseException):
        pass

    checkpoint = Trainer._eval_and_checkpoint

    def dies_after_step_2(self):
        checkpoint(self)
        if self.step == 2:
            raise Killed  # everything in memory is lost, as with SIGKILL

    monkeypatch.setattr(Trainer, "_eval_and_checkpoint", dies_after_step_2)
    with pytest.raises(Killed):
        Trainer(small(steps=6, log_every=3)).fit()
    monkeypatch.undo()
    resumed = small(steps=6, log_every=3, resume=True)
    Trainer(resumed).fit()
    assert [without_timing(r) for r in rows(resumed.out)] == [without_timing(r) for r in rows(straight.out)]
    assert [r["step"] for r in rows(resumed.out) if r["kind"] == "train"] == [3, 6]


def test_one_trainer_per_run_directory(small):
    cfg = small()
    out = Path(cfg.out)
    out.mkdir()
    # another process holding the lock (a child: POSIX locks are per process)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'ab'); fcntl.lockf(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(60)", str(out / ckpt.METRICS_FILE)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainError, match="another process is training"):
            Trainer(cfg).fit()
    finally:
        holder.kill()
        holder.wait()


def test_truncate_metrics_keeps_the_prefix_a_checkpoint_has_seen(tmp_path):
    path = tmp_path / ckpt.METRICS_FILE
    lines = ['{"kind": "train", "step": 1}', '{"kind": "eval", "step": 1}', '{"kind": "train", "step": 2}']
    path.write_text("\n".join(lines) + '\n{"kind": "train", "st')
    with path.open("a+b") as f:
        assert ckpt.truncate_metrics(f, 1) == (2, 2)
        f.write(b'{"kind": "train", "step": 2}\n')
    assert path.read_text() == "\n".join(lines) + "\n"
    with path.open("a+b") as f:
        assert ckpt.truncate_metrics(f, 0) == (0, 3)
    assert path.read_text() == ""
