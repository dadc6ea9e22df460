"""Verification metrics, exact and vectorised: one sort of the scores, ties handled as one threshold."""
import numpy as np


def error_rates(scores, labels):
    """False-reject and false-accept rates at every distinct threshold, from reject-all to accept-all.

    Returns (fnr, fpr, thresholds): at point k the trials with score >= thresholds[k] are accepted.
    Point 0 (threshold +inf) rejects everything: fnr 1, fpr 0; the last point accepts everything.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_tar, n_non = int(labels.sum()), int((~labels).sum())
    if n_tar == 0 or n_non == 0:
        raise ValueError(f"need both target and non-target trials (got {n_tar} target, {n_non} non-target)")
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], labels[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # equal scores are accepted together
    tp = np.cumsum(lab)[last_of_tie]
    fp = np.cumsum(~lab)[last_of_tie]
    fnr = np.r_[1.0, 1.0 - tp / n_tar]
    fpr = np.r_[0.0, fp / n_non]
    return fnr, fpr, np.r_[np.inf, s[last_of_tie]]


def eer(scores, labels):
    """Equal error rate where the (fpr, fnr) polyline crosses fnr = fpr; returns (eer, threshold)."""
    fnr, fpr, thr = error_rates(scores, labels)
    k = int(np.argmax(fnr <= fpr))  # fnr falls and fpr rises along the points; k >= 1
    d0, d1 = fnr[k - 1] - fpr[k - 1], fnr[k] - fpr[k]
    t = d0 / (d0 - d1)
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1])), float(thr[k])


def min_dcf(scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0):
    """Normalised minimum detection cost; returns (min_dcf, threshold)."""
    fnr, fpr, thr = error_rates(scores, labels)
    cost = c_miss * fnr * p_target + c_fa * fpr * (1.0 - p_target)
    k = int(np.argmin(cost))
    return float(cost[k] / min(c_miss * p_target, c_fa * (1.0 - p_target))), float(thr[k])
