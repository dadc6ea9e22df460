"""EER and minDCF are exact: they agree with references built on sklearn's roc_curve, ties included."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_curve

from avtk.metrics import eer, min_dcf


def reference_eer(scores, labels):
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    k = np.argmax(fnr <= fpr)
    d0, d1 = fnr[k - 1] - fpr[k - 1], fnr[k] - fpr[k]
    return fpr[k - 1] + d0 / (d0 - d1) * (fpr[k] - fpr[k - 1])


def reference_min_dcf(scores, labels, p):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    cost = (1 - tpr) * p + fpr * (1 - p)
    return cost.min() / min(p, 1 - p)


@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("seed", range(4))
def test_against_sklearn(seed, decimals):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 3000)
    scores = rng.normal(size=3000) + 1.5 * labels
    if decimals is not None:  # heavy ties
        scores = np.round(scores, decimals)
    assert abs(eer(scores, labels)[0] - reference_eer(scores, labels)) < 1e-6
    for p in (0.01, 0.05, 0.5):
        assert abs(min_dcf(scores, labels, p)[0] - reference_min_dcf(scores, labels, p)) < 1e-6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=40))
def test_small_tied_lists(pairs):
    scores = np.array([s for s, _ in pairs], float)
    labels = np.array([t for _, t in pairs], int)
    if labels.min() == labels.max():
        return
    assert abs(eer(scores, labels)[0] - reference_eer(scores, labels)) < 1e-6
    assert abs(min_dcf(scores, labels, 0.05)[0] - reference_min_dcf(scores, labels, 0.05)) < 1e-6


def test_perfect_and_inverted():
    labels = np.array([1, 1, 0, 0])
    assert eer(np.array([4.0, 3, 2, 1]), labels)[0] == 0.0
    assert eer(np.array([1.0, 2, 3, 4]), labels)[0] == 1.0
    assert min_dcf(np.array([4.0, 3, 2, 1]), labels)[0] == 0.0


def test_needs_both_classes():
    with pytest.raises(ValueError, match="both target and non-target"):
        eer(np.array([1.0, 2.0]), np.array([1, 1]))
