"""Evaluation metrics: top-k accuracy and mean average precision (numpy, no sklearn).

* top-1 for single-label targets (class indices): argmax == label.
  For multi-label (multi-hot) targets: the top-scored class is one of the positives.
* AP per class is the non-interpolated average precision (sklearn's `average_precision_score`:
  sum over distinct score thresholds of (R_n - R_{n-1}) * P_n, tied scores grouped).
  mAP averages over classes with at least one positive (classes with none are undefined and skipped).
* factor scores: for classes made of factors (the synthetic set's sound x shape), whether a
  prediction got one factor right.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def mean_average_precision(scores: np.ndarray, target: np.ndarray) -> float:
    scores = np.asarray(scores, dtype=np.float64)
    hot = _as_multihot(target, scores.shape[1])
    aps = [average_precision(scores[:, c], hot[:, c]) for c in range(scores.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def classification_metrics(scores: np.ndarray, target: np.ndarray, multilabel: bool) -> dict:
    """{'top1', 'top5', 'mAP', 'num_clips'} for one set of predictions.

    `scores` are logits or probabilities (both metrics are rank-based per row / per class, except
    that mAP compares scores across clips, for which we use probabilities: softmax for single-label,
    sigmoid for multi-label; pass logits and set `multilabel` accordingly).
    """
    scores = np.asarray(scores, dtype=np.float64)
    probs = _sigmoid(scores) if multilabel else softmax(scores)
    return {
        "top1": topk_accuracy(scores, target, 1),
        "top5": topk_accuracy(scores, target, 5),
        "mAP": mean_average_precision(probs, target),
        "num_clips": int(scores.shape[0]),
    }


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


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits [N, C]."""
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
