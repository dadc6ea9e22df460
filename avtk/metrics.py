"""Verification metrics, exact and vectorised: one sort of the scores, ties handled as one threshold.

Every function here refuses (ValueError) trials of one class only, NaN scores or LLRs, and infinite scores:
no rate, cost or threshold is computed from a number that is not one. (An infinite LLR is a statement of
certainty, as `pav_llrs` gives, and costs what it should.)
"""
import numpy as np


def _finite(values, what="scores", allow_inf=False):
    """values as float64, or ValueError naming the first trial (1-based) whose value is NaN (or infinite,
    unless allow_inf)."""
    values = np.asarray(values, dtype=np.float64)
    bad = np.isnan(values) if allow_inf else ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what} must be {'numbers' if allow_inf else 'finite numbers'}: trial {first + 1} "
                         f"has {values[first]}")
    return values


def error_rates(scores, labels):
    """False-reject and false-accept rates at every distinct threshold, from reject-all to accept-all.

    Returns (fnr, fpr, thresholds): at point k the trials with score >= thresholds[k] are accepted.
    Point 0 (threshold +inf) rejects everything: fnr 1, fpr 0; the last point accepts everything.
    """
    scores = _finite(scores)
    labels, n_tar, n_non = _check_classes(labels)
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


# ---------------------------------------------------------------------------------------------------------
# Calibration-sensitive metrics. EER and minDCF judge only the order of the scores; Cllr and actDCF judge
# the scores as log-likelihood ratios, so they are meaningful only for calibrated scores (for instance the
# output of `avtk fuse --method logreg`). minCllr is Cllr after the best monotone recalibration of the
# scores (PAV), i.e. the discrimination part of Cllr; Cllr - minCllr is the calibration loss.
# All LLRs are natural-log; Cllr is in bits.
# ---------------------------------------------------------------------------------------------------------

_LN2 = np.log(2.0)


def _check_classes(labels):
    labels = np.asarray(labels).astype(bool)
    n_tar, n_non = int(labels.sum()), int((~labels).sum())
    if n_tar == 0 or n_non == 0:
        raise ValueError(f"need both target and non-target trials (got {n_tar} target, {n_non} non-target)")
    return labels, n_tar, n_non


def cllr(llrs, labels):
    """Log-likelihood-ratio cost in bits: the mean of the target and non-target log-loss of the LLRs
    at prior 0.5, 1/2 [mean_tar log2(1 + e^-llr) + mean_non log2(1 + e^llr)].

    `llrs` are natural-log likelihood ratios; an uninformative system (all LLRs 0) costs exactly 1 bit,
    a perfect one 0. Meaningful only for calibrated scores: raw cosines give arbitrary values.
    """
    llrs = _finite(llrs, "LLRs", allow_inf=True)
    labels, _, _ = _check_classes(labels)
    c_tar = np.logaddexp(0.0, -llrs[labels]).mean()
    c_non = np.logaddexp(0.0, llrs[~labels]).mean()
    return float((c_tar + c_non) / (2.0 * _LN2))


def pav(y, weights=None):
    """Weighted isotonic (non-decreasing) least-squares fit of the sequence `y` by pool-adjacent-violators.

    Returns the fitted values, one per element of y, non-decreasing. Runs a single left-to-right pass
    over a stack of blocks (each block: weighted mean, total weight, length), merging the top blocks while
    they violate the order; every element is pushed once and merged at most once, so O(n). Runs of equal
    consecutive values are pooled first (pooling equal values changes nothing), which leaves few blocks
    for the loop when y is a 0/1 label sequence.
    """
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    if y.ndim != 1 or w.shape != y.shape:
        raise ValueError("pav: y and weights must be 1-d and of the same length")
    n = len(y)
    if n == 0:
        return y.copy()
    starts = np.flatnonzero(np.r_[True, y[1:] != y[:-1]])
    lengths = np.diff(np.r_[starts, n])
    wsum = np.add.reduceat(w, starts)
    ysum = np.add.reduceat(w * y, starts)
    means = np.divide(ysum, wsum, out=y[starts].copy(), where=wsum > 0)
    sm, sw, sl = [], [], []  # the stack of blocks: mean, weight, number of elements
    for mean, weight, length in zip(means.tolist(), wsum.tolist(), lengths.tolist()):
        while sm and sm[-1] >= mean:
            pm, pw, pl = sm.pop(), sw.pop(), sl.pop()
            total = pw + weight
            mean = (pm * pw + mean * weight) / total if total > 0 else mean
            weight, length = total, pl + length
        sm.append(mean)
        sw.append(weight)
        sl.append(length)
    return np.repeat(np.asarray(sm), np.asarray(sl))


def pav_llrs(scores, labels):
    """The optimal monotone calibration of `scores` on these trials: one natural-log LLR per trial, in
    input order.

    Trials are sorted by score and the target indicator is fitted by PAV; equal scores are one block
    (a function of the score must give them the same value), so the result does not depend on how ties
    are ordered. The fitted posterior p (at the empirical prior) becomes llr = logit(p) - logit(n_tar/n);
    blocks of only targets or only non-targets give +inf / -inf.
    """
    scores = _finite(scores)
    labels, n_tar, n_non = _check_classes(labels)
    order = np.argsort(scores, kind="stable")
    s, lab = scores[order], labels[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    counts = np.diff(np.r_[starts, len(s)])
    post = pav(np.add.reduceat(lab, starts) / counts, counts)  # one value per tie group
    post = np.repeat(post, counts)
    with np.errstate(divide="ignore"):
        llr_sorted = np.log(post) - np.log1p(-post) - np.log(n_tar / n_non)
    llrs = np.empty_like(llr_sorted)
    llrs[order] = llr_sorted
    return llrs


def min_cllr(scores, labels):
    """Minimum Cllr in bits: Cllr of the PAV-calibrated scores (`pav_llrs`), the best any monotone
    calibration of these scores can reach on these trials. Depends only on the order of the scores, so it
    is meaningful for raw scores too; always <= cllr(scores) and <= 1."""
    return cllr(pav_llrs(scores, labels), labels)


def act_dcf(llrs, labels, p_target=0.01, c_miss=1.0, c_fa=1.0):
    """Actual detection cost of hard decisions made from calibrated LLRs at the Bayes threshold.

    A trial is accepted when llr >= log(c_fa (1 - p) / (c_miss p)) (= -logit(p) for unit costs), and the
    cost is normalised as in `min_dcf`, by min(c_miss p, c_fa (1 - p)), so actDCF >= minDCF and 1 is the
    cost of the better trivial system. Meaningful only for calibrated scores (natural-log LLRs).
    """
    llrs = _finite(llrs, "LLRs", allow_inf=True)
    labels, n_tar, n_non = _check_classes(labels)
    threshold = np.log(c_fa * (1.0 - p_target)) - np.log(c_miss * p_target)
    accept = llrs >= threshold
    p_miss = np.count_nonzero(~accept & labels) / n_tar
    p_fa = np.count_nonzero(accept & ~labels) / n_non
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    return float(cost / min(c_miss * p_target, c_fa * (1.0 - p_target)))


# ---------------------------------------------------------------------------------------------------------
# Identification metrics. Closed set: the rank-r accuracy (identification rate at rank r) of the probes
# whose speaker is enrolled. Open set, the watch-list measures of FRVT 2002 (P. Grother, R. Micheals,
# P. J. Phillips, "Face Recognition Vendor Test 2002 performance metrics", AVBPA 2003; P. J. Phillips et al.,
# "Face Recognition Vendor Test 2002: Evaluation Report", NISTIR 6965, 2003): at threshold t and rank 1,
#   detection and identification rate  P_DI(t) = |{genuine probes: the top-1 speaker is the true one and its
#                                                  score >= t}| / |genuine probes|
#   false alarm rate                   P_FA(t) = |{impostor probes: the top-1 score >= t}| / |impostor probes|
# where a genuine probe's speaker is enrolled and an impostor's is not. (ISO/IEC 19795-1 calls 1 - P_DI the
# false-negative and P_FA the false-positive identification-error rate, FNIR and FPIR.)
# ---------------------------------------------------------------------------------------------------------


def rank_accuracy(true_ranks, rank):
    """Closed-set identification rate at rank `rank`: the fraction of genuine probes whose true speaker is
    among their `rank` best-scoring speakers. `true_ranks` (G,) int: each probe's rank of its true speaker
    (1 = best), 0 where it is not among the listed candidates. ValueError for no probes or rank < 1."""
    true_ranks = np.asarray(true_ranks)
    if len(true_ranks) == 0:
        raise ValueError("need genuine probes (whose speaker is enrolled) for an identification rate")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    return float(np.count_nonzero((true_ranks >= 1) & (true_ranks <= rank)) / len(true_ranks))


def open_set_rates(genuine, impostor):
    """Open-set identification curve at rank 1 (definitions above): (dir, far, thresholds), float64 arrays,
    from reject-all to accept-all. At point k a probe is accepted when its top-1 score >= thresholds[k]; point
    0 (threshold +inf) accepts nothing.

    `genuine` (G,): each genuine probe's top-1 score when the top-1 speaker is its true speaker, -inf when it
    is not (no threshold detects it correctly); `impostor` (I,): each impostor probe's top-1 score. ValueError
    for no probes of either kind, a NaN, or an infinite impostor score or +inf genuine score.
    """
    genuine = _finite(genuine, "genuine top-1 scores", allow_inf=True)
    impostor = _finite(impostor, "impostor top-1 scores")
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError(f"need both genuine and impostor probes (got {len(genuine)} genuine, "
                         f"{len(impostor)} impostor)")
    if np.isposinf(genuine).any():
        raise ValueError("genuine top-1 scores must be finite or -inf (not identified)")
    found = genuine[np.isfinite(genuine)]
    thresholds = np.r_[np.inf, np.unique(np.r_[found, impostor])[::-1]]
    g, i = np.sort(found), np.sort(impostor)
    dir_ = (len(g) - np.searchsorted(g, thresholds, side="left")) / len(genuine)
    far = (len(i) - np.searchsorted(i, thresholds, side="left")) / len(i)
    return dir_, far, thresholds


def dir_at_far(genuine, impostor, far):
    """(P_DI, threshold): the highest detection-and-identification rate at rank 1 whose false alarm rate is
    <= `far`, and the lowest threshold that gives it (accept a top-1 score >= threshold; +inf: accept
    nothing). Arguments as `open_set_rates`."""
    if not 0 <= far <= 1:
        raise ValueError(f"far must be in [0, 1], got {far}")
    dir_, fars, thresholds = open_set_rates(genuine, impostor)
    k = int(np.flatnonzero(fars <= far)[-1])  # FAR and DIR rise as the threshold falls
    return float(dir_[k]), float(thresholds[k])
