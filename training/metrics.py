"""Evaluation metrics: top-k accuracy, mean average precision, ROC AUC and d-prime (numpy, no sklearn).

* top-1 for single-label targets (class indices): argmax == label.
  For multi-label (multi-hot) targets: the top-scored class is one of the positives.
* AP per class is the non-interpolated average precision (sklearn's `average_precision_score`:
  sum over distinct score thresholds of (R_n - R_{n-1}) * P_n, tied scores grouped).
  mAP averages over classes with at least one positive (classes with none are undefined and skipped).
* AUC per class is the area under the ROC curve (sklearn's `roc_auc_score`: tied scores are one
  threshold, i.e. a positive tied with a negative counts half). AUC macro-averages over classes
  with both positives and negatives (the others are undefined and skipped), as AudioSet papers
  report it (Hershey et al. 2017, "CNN architectures for large-scale audio classification";
  VATT Table 4 reports mAP, AUC and d-prime).
* d-prime = sqrt(2) * Phi^-1(AUC) of the macro AUC: the separation, in standard deviations, of
  two unit-variance Gaussians whose ROC has that area (VATT: "d-prime (based on AUC)"; the AudioSet
  baselines, e.g. AST's code, convert the averaged AUC. VATT's released code,
  vatt/utils/eval/measures.py, instead averages the classes' d-primes, which is higher for the
  same AUCs above 0.5 (Phi^-1 is convex there, Jensen); we follow the papers' definition).
* factor scores: for classes made of factors (the synthetic set's sound x shape), whether a
  prediction got one factor right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from avserve.views import softmax  # noqa: F401  (one softmax for serving and scoring; callers import it from here)


def _as_multihot(target: np.ndarray, num_classes: int) -> np.ndarray:
    target = np.asarray(target)
    if target.ndim == 1:
        out = np.zeros((target.shape[0], num_classes), dtype=np.float64)
        out[np.arange(target.shape[0]), target.astype(np.int64)] = 1.0
        return out
    return (target > 0.5).astype(np.float64)


def topk_accuracy(scores: np.ndarray, target: np.ndarray, k: int = 1) -> float:
    """scores [N, C]; target [N] class indices or [N, C] multi-hot."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[0] == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hot = _as_multihot(target, scores.shape[1])
    hit = np.take_along_axis(hot, top, axis=1).max(axis=1)
    return float(hit.mean())


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class: scores [N], positives [N] bool. NaN if there are no positives."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives).astype(bool)
    n_pos = positives.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positives[order]
    tp = np.cumsum(y)
    # the last index of every group of tied scores is a threshold
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp_at = tp[last]
    precision = tp_at / (last + 1)
    recall = tp_at / n_pos
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def _class_mean(per_class, scores: np.ndarray, target: np.ndarray) -> float:
    """The mean of `per_class(scores[:, c], positives[:, c])` over the classes where it is defined."""
    scores = np.asarray(scores, dtype=np.float64)
    hot = _as_multihot(target, scores.shape[1])
    values = [per_class(scores[:, c], hot[:, c]) for c in range(scores.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def mean_average_precision(scores: np.ndarray, target: np.ndarray) -> float:
    """mAP over the classes with at least one positive."""
    return _class_mean(average_precision, scores, target)


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """ROC AUC of one class: scores [N], positives [N] bool. NaN unless both kinds are present.

    The Mann-Whitney form: the probability that a random positive outscores a random negative,
    ties counting half, from the mid-ranks of the scores. It equals the trapezoidal area under
    sklearn's ROC curve, whose thresholds are the distinct scores."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives).astype(bool)
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    # 1-based ranks, each group of tied scores given the mean of the ranks it spans
    starts = np.r_[0, np.nonzero(np.diff(s))[0] + 1]
    ends = np.r_[starts[1:], len(s)]
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(group_rank, ends - starts)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mean_roc_auc(scores: np.ndarray, target: np.ndarray) -> float:
    """Macro AUC over the classes that have positives and negatives (NaN if none has both)."""
    return _class_mean(roc_auc, scores, target)


def d_prime(auc: float) -> float:
    """sqrt(2) * Phi^-1(AUC) (AudioSet's d-prime); +-inf at AUC 1 / 0, NaN for NaN.

    The standard library's inverse normal CDF (Wichura's AS241, accurate to ~1e-16), so the
    metric needs no scipy at run time."""
    if np.isnan(auc):
        return float("nan")
    if auc >= 1.0 or auc <= 0.0:
        return math.copysign(math.inf, auc - 0.5)
    return math.sqrt(2.0) * NormalDist().inv_cdf(float(auc))


def classification_metrics(scores: np.ndarray, target: np.ndarray, multilabel: bool) -> dict:
    """{'top1', 'top5', 'mAP', 'num_clips'} for one set of predictions, and for multi-label sets
    also 'AUC' and 'd_prime' (what AudioSet results are reported in; for single-label sets
    top-1 and top-5 are the papers' numbers, and mAP is kept as the rank-based summary).

    `scores` are logits or probabilities (all metrics are rank-based per row / per class, except
    that mAP and AUC compare scores across clips, for which we use probabilities: softmax for
    single-label, sigmoid for multi-label; pass logits and set `multilabel` accordingly).
    """
    scores = np.asarray(scores, dtype=np.float64)
    probs = _sigmoid(scores) if multilabel else softmax(scores)
    result = {
        "top1": topk_accuracy(scores, target, 1),
        "top5": topk_accuracy(scores, target, 5),
        "mAP": mean_average_precision(probs, target),
        "num_clips": int(scores.shape[0]),
    }
    if multilabel:  # on the logits: the sigmoid keeps each class's order but rounds large ones into ties
        result["AUC"] = mean_roc_auc(scores, target)
        result["d_prime"] = d_prime(result["AUC"])
    return result


def factor_scores(logits: np.ndarray, target: np.ndarray, class_factors: Sequence[str]) -> dict[str, float]:
    """How well predictions got one factor of the classes right, when each class is a combination
    of factors (the synthetic set: sound x shape; `class_factors[c]` is class c's value of the
    factor, e.g. training.data.synth.class_factors). A unimodal model that only sees one factor
    is capped in top-1, so top-1 cannot tell a perfect audio-only route from a lucky one:
    `accuracy` is the share of clips whose top-1 class has the right factor, `mass` the mean
    softmax probability on the classes with the right factor; both 1.0 for a route that is sure
    of everything its modality can tell. `target`: class indices or one-hot rows."""
    truth = target.argmax(1) if target.ndim == 2 else target
    names = np.asarray(class_factors)
    probabilities = softmax(logits)
    right = names[None, :] == names[truth][:, None]  # [N, C]: the classes that share the clip's factor
    return {
        "accuracy": float(np.mean(names[logits.argmax(1)] == names[truth])),
        "mass": float(np.mean((probabilities * right).sum(1))),
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
