"""Class balance for unbalanced multi-label training sets (AudioSet and its like).

AudioSet's 2M-clip training set is dominated by speech and music. The papers answer this in
three ways, and each is here:

* A capped subset (MBT App. F, "AS-500K"): "we create AS-500K by greedily restricting the
  maximum number of samples per class to be 200K", which left 508,994 of ~2M clips.
  `cap_per_class(records, cap, seed)`: the clips are visited in a seeded random order and a
  clip is kept only if none of its labels has reached `cap` yet, so no class ends with more
  than `cap` clips (a clip counts once for each of its labels). The paper does not give the
  order; a random one keeps the subset an unbiased sample of the clips that fit, where a
  file-order pass would keep whatever the list happens to start with. A cap that bites drops
  the clips of the frequent classes, and with them the co-occurring labels of those clips:
  the price of "maximum per class" being a hard maximum. `avserve data subset` writes the
  subset as a manifest, `avserve train --class-cap N` trains on it.
* Inverse-frequency sampling (`BalancedSampler`, `avserve train --sampling balanced`): each
  epoch draws as many clips as the set has, with replacement, clip i with probability
  proportional to sum over its labels c of 1 / count(c). That is "pick a class uniformly,
  then one of its clips uniformly" (the balanced sampler of the AudioSet baselines, e.g.
  PANNs, and AST's per-clip weights), so every class is drawn about equally often; for a
  single-label set it is exactly uniform over classes.
* VATT's per-batch loss weighting lives with the loss (training/losses.py
  `label_balance_weights`, the supervised objective's `class_balance` option).

All of it is deterministic: the subset from (records, cap, seed), an epoch's draws from
(seed, epoch), so a resumed run sees the same clips as an uninterrupted one.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.data.dataset import EpochSampler
from training.data.records import CAPTION_SEPARATOR, CLASSES_FILE, MANIFEST_FILE, ClipRecord, RecordSet

SAMPLING = ("shuffle", "balanced")


def label_counts(records: Sequence[ClipRecord]) -> Counter[str]:
    """Clips per label (a clip counts once for each of its labels)."""
    return Counter(label for record in records for label in record.labels)


def cap_per_class(records: Sequence[ClipRecord], cap: int, seed: int = 0) -> list[ClipRecord]:
    """The greedy subset with at most `cap` clips per class (see the module docstring), in the
    records' own order."""
    if cap < 1:
        raise ValueError(f"the class cap must be >= 1, not {cap}")
    counts: Counter[str] = Counter()
    keep = np.zeros(len(records), dtype=bool)
    for index in np.random.default_rng([seed, 500]).permutation(len(records)):
        labels = records[index].labels
        if all(counts[label] < cap for label in labels):
            counts.update(labels)
            keep[index] = True
    return [record for record, kept in zip(records, keep) if kept]


def inverse_frequency_weights(records: Sequence[ClipRecord]) -> np.ndarray:
    """Per-clip sampling weights, sum over the clip's labels of 1 / clips with that label,
    normalised to sum to 1 (see the module docstring)."""
    counts = label_counts(records)
    weights = np.array([sum(1.0 / counts[label] for label in record.labels) for record in records], dtype=np.float64)
    return weights / weights.sum()


class BalancedSampler(EpochSampler):
    """EpochSampler's contract (yields (index, epoch) pairs; `set_epoch(epoch, skip)`; sharded
    across ranks; as many items per rank per epoch) with the epoch's clips drawn with
    replacement by `weights` instead of shuffled: the draw is a function of (seed, epoch) only,
    every rank makes the same one and takes every num_replicas-th item of it, so the ranks'
    shards partition the epoch and a resume skips exactly the items already seen."""

    def __init__(self, weights: np.ndarray, *, seed: int = 0, num_replicas: int = 1, rank: int = 0, drop_last: bool = False):
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or not weights.sum() > 0:
            raise ValueError("sampling weights must be a non-empty vector of non-negative numbers with a positive sum")
        super().__init__(len(weights), shuffle=True, seed=seed, num_replicas=num_replicas, rank=rank, drop_last=drop_last)
        self.probabilities = weights / weights.sum()

    def indices(self) -> list[int]:
        total = self.per_rank * self.num_replicas
        draws = np.random.default_rng([self.seed, self.epoch, 7919]).choice(self.length, size=total, p=self.probabilities)
        return draws[self.rank : total : self.num_replicas].tolist()


def write_manifest(records: RecordSet, directory: Path | str) -> Path:
    """Write `records` as DIRECTORY/manifest.csv (absolute paths, so the files stay where they
    are) and DIRECTORY/classes.txt (the class order, so label indices match the source set's
    even if a class lost all its clips), in the format `read_manifest` reads. Returns the
    manifest's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra = list(dict.fromkeys(name for record in records for name in record.extra))
    label_column = "labels" if records.multilabel else "label"
    columns = ["path", label_column, "split", "start", "end", "modalities", "captions", *extra]
    manifest = directory / MANIFEST_FILE
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for r in records:
            writer.writerow([
                str(r.path), ";".join(r.labels), r.split or "", _seconds(r.start), _seconds(r.end), r.modalities or "",
                CAPTION_SEPARATOR.join(r.captions), *(r.extra.get(name, "") for name in extra),
            ])  # fmt: skip
    (directory / CLASSES_FILE).write_text("".join(f"{name}\n" for name in records.classes), encoding="utf-8")
    return manifest


def _seconds(value: float | None) -> str:
    return "" if value is None else repr(float(value))
