"""Fixtures for the dataset tests: one small synthetic dataset per test session (per xdist worker).

24 audio+video clips with unimodal_fraction=0.5 give 48 files and, with the generator's
recipe rotation, every audio+video, audio-only and video-only format at least once, while
costing about two seconds to encode.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest

from training.data.synth import SynthConfig, generate_dataset


@dataclass(frozen=True)
class SynthSession:
    root: Path
    clips: int
    seed: int
    config: SynthConfig
    rows: list[dict[str, str]]  # manifest.csv as read by the csv module, not by our reader

    def rows_with(self, modalities: str) -> list[dict[str, str]]:
        return [row for row in self.rows if row["modalities"] == modalities]


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSession:
    root = tmp_path_factory.mktemp("synth")
    clips, seed, config = 24, 7, SynthConfig(unimodal_fraction=0.5)
    manifest = generate_dataset(root, clips=clips, seed=seed, config=config, progress=False)
    with manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return SynthSession(root=root, clips=clips, seed=seed, config=config, rows=rows)
