"""AudioSet-size evaluation: training.metrics' mAP / AUC / d-prime against scikit-learn's, side by side.

    .venv/bin/python scripts/bench_metrics.py [--clips 18589] [--classes 527] [--repeats 3]

Random logits for MBT's AudioSet test set size (18,589 clips, 527 classes; MBT Sec. 4.1) with
AudioSet-like sparse labels (about 2.7 labels a clip, class frequencies falling off as a power
law), rounded to 3 decimals so that tied scores occur
as they do with low-precision outputs. Prints each implementation's best-of-N wall time, the
ratio, and the difference between the values (they should agree to ~1e-12). Needs the [dev]
extra (scikit-learn, scipy). Run it with OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from training.metrics import d_prime, mean_average_precision, mean_roc_auc


def audioset_like(clips: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frequency = 1.0 / np.arange(1, classes + 1) ** 1.1
    frequency *= 2.7 / frequency.sum()  # mean labels per clip
    target = (rng.random((clips, classes)) < np.minimum(frequency, 0.9)).astype(np.int64)
    logits = np.round(rng.normal(size=(clips, classes)) + 2.0 * target, 3)
    return logits, target


def reference(logits: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    positives = target.sum(0)
    with_positives = np.nonzero(positives > 0)[0]
    both = np.nonzero((positives > 0) & (positives < len(target)))[0]
    ap = np.mean([average_precision_score(target[:, c], logits[:, c]) for c in with_positives])
    return float(ap), float(roc_auc_score(target[:, both], logits[:, both], average="macro"))


def ours(logits: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    return mean_average_precision(logits, target), mean_roc_auc(logits, target)


def best_time(function, *args, repeats: int):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function(*args)
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=18589)
    parser.add_argument("--classes", type=int, default=527)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logits, target = audioset_like(args.clips, args.classes)
    print(f"{args.clips} clips x {args.classes} classes, {target.sum(1).mean():.2f} labels a clip, "
          f"{int((target.sum(0) == 0).sum())} classes without positives")  # fmt: skip
    t_ours, (ap, auc) = best_time(ours, logits, target, repeats=args.repeats)
    t_ref, (ap_ref, auc_ref) = best_time(reference, logits, target, repeats=args.repeats)
    print(f"training.metrics: {t_ours:.2f} s   sklearn: {t_ref:.2f} s   ratio ours/sklearn: {t_ours / t_ref:.2f}")
    print(f"mAP {ap:.6f} (|diff| {abs(ap - ap_ref):.1e})   AUC {auc:.6f} (|diff| {abs(auc - auc_ref):.1e})   "
          f"d-prime {d_prime(auc):.6f} (scipy {np.sqrt(2) * norm.ppf(auc_ref):.6f})")  # fmt: skip


if __name__ == "__main__":
    main()
