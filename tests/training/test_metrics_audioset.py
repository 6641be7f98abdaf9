"""AudioSet's metrics (mAP, AUC, d-prime) against scikit-learn and scipy, the references the
papers' numbers come from (VATT's evaluation calls sklearn's average_precision_score and
roc_auc_score, and scipy's norm.ppf)."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from training.metrics import classification_metrics, d_prime, mean_average_precision, mean_roc_auc, roc_auc


def _random_set(seed: int, clips: int = 60, classes: int = 7, ties: bool = True):
    """Scores (coarsely rounded when `ties`, so many are equal within a class), a multi-hot
    target whose class 3 has no positives and class 5 no negatives."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(clips, classes))
    if ties:
        scores = np.round(scores, 0)
    target = (rng.random((clips, classes)) < 0.3).astype(np.int64)
    target[:, 3] = 0
    target[:, 5] = 1
    return scores, target


def _sklearn_auc(scores, hot):
    both = [c for c in range(hot.shape[1]) if 0 < hot[:, c].sum() < len(hot)]
    return roc_auc_score(hot[:, both], scores[:, both], average="macro")


def _sklearn_map(scores, hot):
    with_positives = [c for c in range(hot.shape[1]) if hot[:, c].sum() > 0]
    return np.mean([average_precision_score(hot[:, c], scores[:, c]) for c in with_positives])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [True, False])
def test_map_and_auc_match_sklearn_multilabel(seed, ties):
    scores, target = _random_set(seed, ties=ties)
    assert mean_roc_auc(scores, target) == pytest.approx(_sklearn_auc(scores, target), abs=1e-9)
    assert mean_average_precision(scores, target) == pytest.approx(_sklearn_map(scores, target), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_map_and_auc_match_sklearn_single_label_one_hot(seed):
    rng = np.random.default_rng(100 + seed)
    scores = np.round(rng.normal(size=(40, 5)), 1)
    labels = rng.integers(0, 4, size=40)  # class 4 never occurs: skipped by both metrics
    hot = np.eye(5, dtype=np.int64)[labels]
    assert mean_roc_auc(scores, labels) == pytest.approx(_sklearn_auc(scores, hot), abs=1e-9)
    assert mean_roc_auc(scores, hot) == pytest.approx(_sklearn_auc(scores, hot), abs=1e-9)
    assert mean_average_precision(scores, labels) == pytest.approx(_sklearn_map(scores, hot), abs=1e-9)


def test_auc_hand_computed_with_ties_and_undefined_classes():
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) (0.9>0.1) (0.5=0.5 -> 1/2) (0.5>0.1) -> 3.5/4
    assert roc_auc(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(3.5 / 4)
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([0, 0])))
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert np.isnan(mean_roc_auc(np.zeros((3, 2)), np.ones((3, 2))))


@pytest.mark.parametrize("auc", [0.5, 0.51, 0.75, 0.9, 0.97, 0.999, 0.3, 1e-6])
def test_d_prime_matches_scipy(auc):
    assert d_prime(auc) == pytest.approx(np.sqrt(2) * norm.ppf(auc), abs=1e-9)


def test_d_prime_limits():
    assert d_prime(1.0) == np.inf and d_prime(0.0) == -np.inf and np.isnan(d_prime(float("nan")))


@pytest.mark.parametrize("seed", range(3))
def test_classification_metrics_report_audioset_metrics_for_multilabel_only(seed):
    logits, target = _random_set(seed, ties=False)
    result = classification_metrics(logits, target, multilabel=True)
    probabilities = 1 / (1 + np.exp(-logits))
    assert result["AUC"] == pytest.approx(_sklearn_auc(probabilities, target), abs=1e-9)
    assert result["d_prime"] == pytest.approx(np.sqrt(2) * norm.ppf(result["AUC"]), abs=1e-9)
    assert result["mAP"] == pytest.approx(_sklearn_map(probabilities, target), abs=1e-9)
    single = classification_metrics(logits, target.argmax(1), multilabel=False)
    assert set(single) == {"top1", "top5", "mAP", "num_clips"}


def test_auc_on_logits_keeps_the_order_the_sigmoid_rounds_away():
    # sigmoid(40) == sigmoid(50) == 1.0 in float64: on probabilities the two would tie
    logits = np.array([[50.0], [40.0], [-1.0]])
    target = np.array([[1], [0], [0]])
    assert classification_metrics(logits, target, multilabel=True)["AUC"] == 1.0
