import numpy as np
import pytest

from training.evaluate import score_outputs
from training.metrics import average_precision, classification_metrics, mean_average_precision, topk_accuracy


def test_average_precision_hand_computed():
    # ranking: 0.9(+) 0.8(-) 0.7(+) 0.1(-) -> precisions at the positives: 1/1, 2/3 -> AP = (1 + 2/3) / 2
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    positives = np.array([1, 0, 1, 0])
    assert average_precision(scores, positives) == pytest.approx((1 + 2 / 3) / 2)
    # all positives ranked first -> 1
    assert average_precision(np.array([3.0, 2.0, 1.0]), np.array([1, 1, 0])) == pytest.approx(1.0)
    # no positives -> undefined
    assert np.isnan(average_precision(np.array([1.0, 2.0]), np.array([0, 0])))


def test_average_precision_ties_grouped_like_sklearn():
    # two tied scores, one positive one negative, then a positive: thresholds {0.5: tp=1 of 2}, {0.2: tp=2 of 3}
    scores = np.array([0.5, 0.5, 0.2])
    positives = np.array([1, 0, 1])
    assert average_precision(scores, positives) == pytest.approx(0.5 * 0.5 + 0.5 * (2 / 3))


def test_map_skips_classes_without_positives():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    target = np.array([0, 1, 1])  # class 2 has no positives
    ap0 = 1.0  # positive ranked first
    ap1 = (1 / 1 + 2 / 2) / 2  # ranks for class 1: 0.8(+), 0.4(+), 0.1(-)
    assert mean_average_precision(scores, target) == pytest.approx((ap0 + ap1) / 2)


def test_topk_single_and_multilabel():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    target = np.array([1, 1, 0])
    assert topk_accuracy(scores, target, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, target, 2) == pytest.approx(2 / 3)
    multi = np.array([[0, 1, 1], [0, 1, 1], [1, 0, 1]])
    assert topk_accuracy(scores, multi, 1) == pytest.approx(2 / 3)


class _TwoHeadModel:
    """Just the contract score_outputs reads: heads and which exist for which inputs."""

    head_names = ("audio", "video")
    servable_modalities = (frozenset({"audio", "video"}), frozenset({"audio"}), frozenset({"video"}))

    @staticmethod
    def heads_for(modalities):
        return tuple(h for h in ("audio", "video") if h in modalities)


def test_score_outputs_counts_heads_only_where_they_exist_and_averages_logits():
    logits = {
        "audio": np.array([[3.0, 0.0], [5.0, 0.0], [0.0, 0.0]]),
        "video": np.array([[0.0, 2.0], [0.0, 9.0], [0.0, 1.0]]),
    }
    target = np.array([0, 1, 1])
    # clip 0: both tracks; clip 1: video only (its audio logits come from zeros and must not count);
    # clip 2: video only
    has_audio = np.array([True, False, False])
    has_video = np.array([True, True, True])
    r = score_outputs(_TwoHeadModel, logits, target, has_audio, has_video, multilabel=False)
    assert r["heads"]["audio"]["num_clips"] == 1 and r["heads"]["audio"]["top1"] == 1.0
    assert r["heads"]["video"]["num_clips"] == 3 and r["heads"]["video"]["top1"] == 2 / 3
    # clip 0 is served the mean of the logits, [1.5, 1.0] -> class 0 (the mean of the probabilities
    # would pick class 1: softmax([3,0]) = [.95,.05], softmax([0,2]) = [.12,.88]); clips 1, 2: video
    assert r["average"]["top1"] == 1.0
    assert r["by_modalities"]["audio+video"]["num_clips"] == 1
    assert r["by_modalities"]["video"]["num_clips"] == 2 and r["by_modalities"]["video"]["top1"] == 1.0
    m = classification_metrics(np.array([[2.0, 1.0], [0.0, 1.0]]), np.array([0, 1]), multilabel=False)
    assert m["top1"] == 1.0 and m["mAP"] == 1.0
