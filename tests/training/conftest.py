"""Fixtures for the training tests: one small synthetic dataset per test run (shared by the
xdist workers), generated with the project's own generator (real encoded files + manifest.csv)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The test environment is a full [train,triton,dev] install (scripts/setup.sh): without torch
# these tests must fail, not vanish from the run as skips.
import torch

# two shared cores: keep each test process (and its DataLoader workers) on one thread
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def synth_dir(shared_dataset) -> Path:
    # Written once per run and read by both xdist workers (tests/conftest.py).
    return shared_dataset("training_synth", clips=36, seed=0)


@pytest.fixture(scope="session")
def synth_manifest(synth_dir) -> Path:
    return synth_dir / "manifest.csv"


@pytest.fixture()
def tiny_train(tmp_path, synth_dir):
    """Keyword arguments for a fast TrainConfig on the synthetic set."""

    def make(**kw):
        from training.trainer import TrainConfig

        base = dict(
            model="zorro_tiny",
            data=synth_dir,
            out=tmp_path / "run",
            batch_size=4,
            steps=3,
            lr=1e-3,
            workers=0,
            progress=False,
            log_every=1,
            max_eval_clips=4,
        )
        base.update(kw)
        return TrainConfig(**base)

    return make
