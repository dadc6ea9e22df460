"""EER and minDCF are exact: they agree with references built on sklearn's roc_curve, ties included.
Cllr, minCllr (PAV) and actDCF behave as their definitions say on calibrated and miscalibrated LLRs."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_curve

from avtk.metrics import act_dcf, cllr, eer, min_cllr, min_dcf, pav, pav_llrs


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


def calibrated_gaussian_llrs(n=20000, mu=4.0, seed=0):
    """LLRs that are calibrated by construction: N(+mu, 2mu) for targets and N(-mu, 2mu) for non-targets
    (the log ratio of these two densities at x is x itself)."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    llrs = np.r_[rng.normal(mu, np.sqrt(2 * mu), n), rng.normal(-mu, np.sqrt(2 * mu), n)]
    return llrs, labels


def test_cllr_definition_and_known_values():
    llrs = np.array([2.0, -1.0, 0.5, -3.0])
    labels = np.array([1, 1, 0, 0])
    expected = 0.5 * (np.mean(np.log2(1 + np.exp(-llrs[:2]))) + np.mean(np.log2(1 + np.exp(llrs[2:]))))
    assert cllr(llrs, labels) == pytest.approx(expected, abs=1e-12)
    assert cllr(np.zeros(4), labels) == pytest.approx(1.0)              # uninformative: 1 bit
    assert cllr(np.array([1e3, 1e3, -1e3, -1e3]), labels) == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(cllr(np.array([-1e4, 0, 0, 0]), labels))         # no overflow


def test_min_cllr_known_small_examples():
    # sorted labels 0 1 0 1: PAV posteriors 0, .5, .5, 1 -> LLRs -inf, 0, 0, +inf
    assert min_cllr(np.array([1.0, 2, 3, 4]), np.array([0, 1, 0, 1])) == pytest.approx(0.5)
    np.testing.assert_array_equal(pav_llrs(np.array([1.0, 2, 3, 4]), np.array([0, 1, 0, 1])),
                                  [-np.inf, 0, 0, np.inf])
    assert min_cllr(np.array([1.0, 2, 3, 4]), np.array([0, 0, 1, 1])) == 0.0   # separable
    assert min_cllr(np.array([1.0, 1.0]), np.array([0, 1])) == pytest.approx(1.0)  # a tie is one block
    assert min_cllr(np.array([4.0, 3, 2, 1]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)  # inverted


def test_calibrated_gaussian_llrs():
    llrs, labels = calibrated_gaussian_llrs()
    c, mc = cllr(llrs, labels), min_cllr(llrs, labels)
    assert mc <= c < 0.4
    assert c - mc < 0.01
    for p in (0.01, 0.05, 0.5):
        assert act_dcf(llrs, labels, p) >= min_dcf(llrs, labels, p)[0] - 1e-12
        assert act_dcf(llrs, labels, p) - min_dcf(llrs, labels, p)[0] < 0.05


@pytest.mark.parametrize("transform", [lambda x: x + 3.0, lambda x: 3.0 * x, lambda x: 0.2 * x - 1.0])
def test_miscalibration_costs_cllr_not_min_cllr(transform):
    llrs, labels = calibrated_gaussian_llrs(seed=1)
    bad = transform(llrs)
    assert cllr(bad, labels) > cllr(llrs, labels) + 0.02
    assert min_cllr(bad, labels) == pytest.approx(min_cllr(llrs, labels), abs=1e-12)  # order unchanged
    assert act_dcf(bad, labels, 0.01) > act_dcf(llrs, labels, 0.01)


def test_pav_matches_isotonic_regression_and_is_monotone():
    rng = np.random.default_rng(3)
    for n in (1, 2, 17, 500):
        y = np.round(rng.normal(size=n), 1)
        w = rng.uniform(0.1, 2.0, n)
        fit = pav(y, w)
        assert np.all(np.diff(fit) >= 0)
        np.testing.assert_allclose(fit, IsotonicRegression().fit_transform(np.arange(n), y, sample_weight=w),
                                   atol=1e-12)
    assert pav(np.array([])).shape == (0,)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(-4, 4), st.booleans()), min_size=2, max_size=40), st.integers(0, 2**32 - 1))
def test_min_cllr_properties_on_tied_lists(pairs, seed):
    scores = np.array([s for s, _ in pairs], float)
    labels = np.array([t for _, t in pairs], int)
    if labels.min() == labels.max():
        return
    llrs = pav_llrs(scores, labels)
    order = np.argsort(scores, kind="stable")
    assert np.all(llrs[order][1:] >= llrs[order][:-1])            # monotone in the score
    assert len(set(llrs[scores == scores[0]])) == 1                # equal scores, equal LLR
    mc = min_cllr(scores, labels)
    assert 0.0 <= mc <= 1.0 + 1e-12
    assert mc <= cllr(scores, labels) + 1e-12
    assert mc <= cllr(0.5 * scores - 1.0, labels) + 1e-12
    perm = np.random.default_rng(seed).permutation(len(scores))
    assert min_cllr(scores[perm], labels[perm]) == pytest.approx(mc, abs=1e-12)  # tie order is irrelevant


def test_act_dcf_bayes_threshold():
    llrs = np.array([1.0, -1.0, 0.5, -2.0, 0.0])
    labels = np.array([1, 1, 0, 0, 1])
    # p = 0.5: threshold 0 (accepted at equality): misses 1/3, false alarms 1/2
    assert act_dcf(llrs, labels, 0.5) == pytest.approx((0.5 / 3 + 0.5 * 0.5) / 0.5)
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 1000)
    llrs = rng.normal(size=1000) * 3 + 2 * labels
    for p in (0.01, 0.05, 0.3):
        accept = llrs >= np.log((1 - p) / p)
        p_miss = np.mean(~accept[labels == 1])
        p_fa = np.mean(accept[labels == 0])
        assert act_dcf(llrs, labels, p) == pytest.approx((p * p_miss + (1 - p) * p_fa) / min(p, 1 - p))
        assert act_dcf(llrs, labels, p) >= min_dcf(llrs, labels, p)[0] - 1e-12
    with pytest.raises(ValueError, match="both target and non-target"):
        act_dcf(np.array([1.0]), np.array([1]), 0.01)
