"""Two-step audio-visual cleansing of a training list (arXiv 2210.15903), each step explicit and measurable.

Inputs: the utterances of a training data dir with their labelled speakers, one audio embedding per
utterance (required) and one face embedding per utterance (optional: an utterance without one, or with an
empty matrix, is judged on audio alone and counted). A matrix value (crops, or one row per face frame) is
reduced to one vector: each row L2-normalised, then averaged. Every utterance vector is L2-normalised, the
modality's mean unit vector is subtracted (unless `subtract_mean=False`), and the result L2-normalised again.

Similarities (per modality; cosine throughout)
    own     similarity to the robust leave-one-out centroid of the utterance's labelled speaker:
            1. plain pass: the centroid of the speaker's other utterances; its cosine s0 gives every
               utterance a robust z-score z0 = (s0 - median) / (1.4826 MAD) over all utterances;
            2. one re-estimation pass: each utterance gets a weight, Tukey's biweight of z0 on the low
               side only, w = (1 - (z0/4.685)^2)^2 for -4.685 < z0 < 0, 0 below, 1 for z0 >= 0; the own
               centroid of utterance i is sum_{j != i} w_j x_j over its speaker (the plain one if all
               those weights are 0). Outliers, mislabels among them, thus hardly pull a centroid.
            An utterance whose speaker has no other utterance (with that modality) has no own similarity:
            that modality is unavailable for it.
    other   similarity to the nearest OTHER speaker's centroid (weighted mean of all its utterances).
    margin  own - other: negative when another speaker is closer than the labelled one.
    z       (own - median) / (1.4826 MAD) over all utterances' own similarities (the std if MAD is 0).

Step 1, coarse ("peculiar"): an utterance is peculiar when, in any available modality, its own similarity
    is low relative to the data, z < -peculiar_z (default 2: a robust two-sigma fence whose location and
    scale come from the median and MAD of the data), or its margin is negative.

Step 2, fine (which peculiar utterances are wrongly labelled). Two methods:

`joint` (default): a mislabel is atypical in EVERY modality at once, because the face and the voice of the
    utterance both belong to another person, while a clean utterance that is atypical in one modality (a
    noisy channel, a bad frame) is typical in the other: given the true identity the two modalities are
    independent. Per modality, p_m = Phi(z_m) (the robust z of the own similarity, Phi the normal CDF) is
    the probability that a clean utterance is this atypical; under independence the joint p-value of
    "atypical in all k available modalities" is max_m(p_m)^k. The Benjamini-Hochberg procedure over all
    utterances at false-discovery rate `fdr` (default 0.05) gives the threshold, so the expected fraction
    of clean utterances among the flagged is at most `fdr`: the threshold comes from the data, and no
    margin or similarity constant is tuned by hand. This rule survives networks that memorised their
    training labels (the usual case: they were trained on the noisy list), which pull a mislabel's own
    similarity up and its margin positive, but cannot make it typical in both modalities. With audio
    alone (k = 1) it rests on the normal tail of one modality and is much weaker (counted as audio_only).

`synthetic`: a logistic-regression classifier
    (standardised features, sklearn's lbfgs) trained on SYNTHETIC mislabels made from the same training
    set: a seeded sample of up to `num_synthetic` utterances (those with an own audio similarity) is
    relabelled, each to a speaker drawn uniformly among the other speakers, and their features recomputed
    as if filed there (own = cosine to the new speaker's centroid; the true speaker's leave-one-out
    centroid becomes a candidate "other"); the same utterances under their own labels are the clean
    class (balanced classes). Features: audio [own, margin] and visual [own, margin]. Two classifiers are
    trained: audio-visual (4 features, for utterances with both modalities) and audio-only (2 features,
    for utterances without a usable face embedding). An utterance is flagged noisy when it is peculiar
    AND its predicted probability of being mislabelled exceeds `threshold` (default 0.5: the likelihood
    ratio of the balanced synthetic classes is above 1). Synthetic mislabels are only realistic for a
    network that never saw the utterances' labels: on the mini recipe, whose networks trained on the noisy
    list memorised its mislabels, it finds 1 of 24 while `joint` finds all of them. The synthetic set also estimates, with 5-fold
    cross-validation grouped by utterance, the recall of the whole two-step rule on mislabels and its
    false-flag rate on the utterances under their own labels, which are reported without any ground truth
    (the latter is an upper bound: the real mislabels hidden among them are counted as false flags).

Same inputs and seed give identical outputs.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from avtk.errors import AvtkError
from avtk.io.ark import VectorTable, empty_embedding_error
from avtk.scoring import check_centred, check_embeddings, unit

log = logging.getLogger(__name__)

TUKEY_C = 4.685  # Tukey's biweight constant (95 % efficiency at the normal)
MAD_SCALE = 1.4826  # MAD -> standard deviation at the normal
CHUNK = 4096  # rows per block of utterance x centroid similarities
MIN_CLASS = 5  # fewest synthetic examples of each class to train a classifier


# --------------------------------------------------------------------------------------------------
# embeddings


def utterance_matrix(table, utts, where, required, frames=False):
    """(rows, X): the utterances of `utts` that have an embedding in `table` (int64 positions in `utts`) and
    their unit vectors, float32 (len(rows), dim), from a `load_table` dict or a `load_vectors` VectorTable
    (gathered in one step, no per-utterance arrays).

    A matrix (per-frame rows, as face extractors without pooling write them) is accepted only with `frames`
    (the face table) and reduced to the mean of its L2-normalised rows; without it (the audio table: one
    vector per utterance) a matrix is an AvtkError naming the table and the utterance (a feature table given
    as embeddings). Every vector is then L2-normalised (so vectors and matrices, and extractors of any
    scale, are on one footing). A missing key is an AvtkError naming the
    utterance when `required`, else left out. An empty embedding ((0,), (0, dim): no face is no entry, not
    an empty one) is an AvtkError naming the table and the utterance, the rule of `avtk.io.ark.load_vectors`.
    Non-finite values and zero vectors (`avtk.scoring.check_embeddings`, the rule `avtk score` applies) and
    mismatched dimensions are errors naming the utterance.
    """
    if isinstance(table, VectorTable):
        index = table.index
        found = np.fromiter((index.get(u, -1) for u in utts), np.int64, len(utts))
        rows = np.flatnonzero(found >= 0)
        if required and len(rows) < len(utts):
            raise AvtkError(f"{where}: no embedding for utterance {utts[int(np.argmin(found))]!r}")
        X = table.matrix[found[rows]]
        check_embeddings(X, [utts[i] for i in rows], where)
        return rows, unit(X)  # the float32 norm of a tiny or huge vector under- or overflows; unit's does not
    rows, out, dim = [], [], None
    for i, utt in enumerate(utts):
        value = table.get(utt)
        if value is None:
            if required:
                raise AvtkError(f"{where}: no embedding for utterance {utt!r}")
            continue
        x = np.asarray(value, dtype=np.float64)
        if x.size == 0:
            raise empty_embedding_error(where, utt, x.shape)
        if x.ndim == 2 and not frames:
            raise AvtkError(f"{where}: utterance {utt!r}: a matrix of shape {x.shape} where an embedding vector "
                            "is expected (a feature table given as embeddings?)")
        if x.ndim == 2:
            check_embeddings(x[None], [utt], where)
            x = (x / np.linalg.norm(x, axis=1, keepdims=True)).mean(axis=0)
        elif x.ndim != 1:
            raise AvtkError(f"{where}: utterance {utt!r}: expected a vector or a matrix, got shape {x.shape}")
        check_embeddings(x[None], [utt], where)
        if dim is None:
            dim = x.shape[0]
        elif x.shape[0] != dim:
            raise AvtkError(f"{where}: utterance {utt!r}: embedding dimension {x.shape[0]}, expected {dim}")
        rows.append(i)
        out.append((x / np.linalg.norm(x)).astype(np.float32))
    X = np.stack(out) if out else np.zeros((0, 0), np.float32)
    return np.asarray(rows, np.int64), X


def utterance_vectors(table, utts, where, required, frames=False):
    """{utt: 1-D float32 unit vector} for `utts` from a loaded embedding table: `utterance_matrix` as a
    dict, for small callers."""
    rows, X = utterance_matrix(table, list(utts), where, required, frames)
    utts = list(utts)
    return {utts[i]: x for i, x in zip(rows.tolist(), X)}


def _unit(x):
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _robust_location_scale(values):
    """(median, robust sd) of the finite values: 1.4826 MAD, the sd if MAD is 0, 1 if both are 0."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 1.0
    med = float(np.median(v))
    scale = MAD_SCALE * float(np.median(np.abs(v - med)))
    if not scale > 0:
        scale = float(np.std(v))
    if not scale > 0:
        scale = 1.0
    return med, scale


def _tukey_low(z):
    """Tukey biweight on the low side: 1 for z >= 0, (1-(z/c)^2)^2 for -c < z < 0, 0 below; 1 for NaN."""
    w = np.ones_like(z)
    low = np.isfinite(z) & (z < 0)
    w[low] = np.clip(1.0 - (z[low] / TUKEY_C) ** 2, 0.0, None) ** 2
    return w


class Modality:
    """Similarity statistics of one modality: robust leave-one-out centroids and nearest other speaker.

    X: (n, d) unit vectors (float32 keeps the memory down; sums and similarities are float64); spk: (n,)
    speaker indices in [0, num_spk).

    Cost: the own similarities are one row-wise dot each, O(n d). The nearest other speaker needs every
    utterance against every centroid, O(n S d) for S speakers (`score`): a float32 matrix product a block of
    rows at a time, the winner's similarity recomputed in float64. It is linear in n for a fixed set of
    speakers (VoxCeleb2: 5,994); no exact search does better in this dimension.
    """

    def __init__(self, name, X, spk, num_spk):
        self.name = name
        self.X = X
        self.spk = spk
        self.num_spk = num_spk
        n, d = X.shape
        counts = np.bincount(spk, minlength=num_spk)
        self.counts = counts
        self.present = counts > 0
        self.valid = counts[spk] >= 2  # has a leave-one-out centroid
        ones = np.ones(n)
        sums = self._speaker_sums(X, spk, ones, num_spk)
        s0 = self._loo_cos(X, spk, sums, ones, self.valid)
        med0, sd0 = _robust_location_scale(s0)
        self.weights = w = _tukey_low((s0 - med0) / sd0)
        wsums = self._speaker_sums(X, spk, w, num_spk)
        wtot = np.bincount(spk, weights=w, minlength=num_spk)
        fallback = wtot[spk] - w <= 1e-9  # every other utterance of the speaker has weight 0
        self.own_loo = self._loo_cos(X, spk, wsums, w, self.valid & ~fallback)
        self.own_loo[self.valid & fallback] = s0[self.valid & fallback]
        self.centroids = _unit(np.where((wtot > 1e-9)[:, None], wsums, sums))
        self._c32 = np.ascontiguousarray(self.centroids, np.float32)
        self.median, self.scale = _robust_location_scale(self.own_loo)

    @staticmethod
    def _speaker_sums(X, spk, w, num_spk):
        """(num_spk, d): sum of w_i x_i over each speaker's utterances."""
        sums = np.zeros((num_spk, X.shape[1]))
        order = np.argsort(spk, kind="stable")
        starts = np.searchsorted(spk[order], np.arange(num_spk))
        ends = np.searchsorted(spk[order], np.arange(num_spk), side="right")
        for s in np.flatnonzero(ends > starts):
            idx = order[starts[s]:ends[s]]
            sums[s] = w[idx] @ X[idx]
        return sums

    @staticmethod
    def _loo_cos(X, spk, sums, w, rows_ok):
        """cos(x_i, sums[spk_i] - w_i x_i) where rows_ok, NaN elsewhere, without (n, d) temporaries:
        x.(c - w x) = x.c - w |x|^2 and |c - w x|^2 = |c|^2 - 2 w x.c + w^2 |x|^2."""
        out = np.full(len(X), np.nan)
        sq = np.einsum("ij,ij->i", sums, sums)
        for start in range(0, len(X), CHUNK):
            sl = slice(start, start + CHUNK)
            x, s_, wi = X[sl].astype(np.float64), spk[sl], w[sl]
            xx = np.einsum("ij,ij->i", x, x)
            xc = np.einsum("ij,ij->i", x, sums[s_])
            den = np.sqrt(np.maximum(sq[s_] - 2 * wi * xc + wi * wi * xx, 0.0))
            with np.errstate(invalid="ignore", divide="ignore"):
                out[sl] = (xc - wi * xx) / np.maximum(den, 1e-12)
        out[~rows_ok] = np.nan
        return out

    def z(self, own):
        return (own - self.median) / self.scale

    def score(self, rows, labels):
        """(own, other) similarities of rows (indices into X) filed under speakers `labels`.

        Where labels equal the true speakers these are the real features; elsewhere, those the utterance
        would have if it were (wrongly) filed under the label. NaN where undefined.
        """
        rows = np.asarray(rows, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        own = np.full(len(rows), np.nan)
        other = np.full(len(rows), np.nan)
        absent = ~self.present
        for start in range(0, len(rows), CHUNK):
            r = rows[start:start + CHUNK]
            lab = labels[start:start + CHUNK]
            true = self.spk[r]
            loo = self.own_loo[r]
            ar = np.arange(len(r))
            x = self.X[r].astype(np.float64)
            S = np.asarray(self.X[r], np.float32) @ self._c32.T  # the search, in float32
            if absent.any():
                S[:, absent] = -np.inf
            same = true == lab
            own_c = np.where(same, loo, np.einsum("ij,ij->i", x, self.centroids[lab]))
            own_c[~same & absent[lab]] = np.nan
            moved = ~same
            S[ar[moved], true[moved]] = np.where(np.isfinite(loo[moved]), loo[moved], -np.inf)
            S[ar, lab] = -np.inf
            j = S.argmax(axis=1)
            best = np.einsum("ij,ij->i", x, self.centroids[j])  # the winner's similarity in float64
            loo_won = moved & (j == true)
            best[loo_won] = loo[loo_won]
            best[~np.isfinite(S[ar, j])] = np.nan
            own[start:start + CHUNK] = own_c
            other[start:start + CHUNK] = best
        return own, other


# --------------------------------------------------------------------------------------------------
# the two steps


@dataclass
class Result:
    utts: list
    labels: list  # labelled speaker of each utterance
    audio_sim: np.ndarray  # own-speaker similarity (NaN: unavailable)
    visual_sim: np.ndarray
    audio_other: np.ndarray
    visual_other: np.ndarray
    audio_z: np.ndarray
    visual_z: np.ndarray
    peculiar: np.ndarray  # bool
    prob: np.ndarray  # joint: the joint p-value; synthetic: the probability of a wrong label (NaN: not judged)
    noisy: np.ndarray  # bool
    stats: dict = field(default_factory=dict)

    @property
    def audio_margin(self):
        return self.audio_sim - self.audio_other

    @property
    def visual_margin(self):
        return self.visual_sim - self.visual_other


def _as_rows(vectors, utts):
    """(rows, float32 X) of the utterances with a vector: `vectors` as given if a pair, else from a dict."""
    if isinstance(vectors, tuple):
        return vectors
    rows = np.array([i for i, u in enumerate(utts) if u in vectors], dtype=np.int64)
    X = np.stack([np.asarray(vectors[utts[i]], np.float32) for i in rows]) if len(rows) else None
    return rows, X


def _peculiar(own, other, mod, peculiar_z):
    """(low, negative margin) flags; False where unavailable."""
    with np.errstate(invalid="ignore"):
        low = np.isfinite(own) & (mod.z(own) < -peculiar_z)
        neg = np.isfinite(own) & np.isfinite(other) & (own - other < 0)
    return low, neg


def _features(a_own, a_other, v_own, v_other):
    """(audio-visual features (n,4), audio-only features (n,2), audio ok, visual ok)."""
    a_ok = np.isfinite(a_own) & np.isfinite(a_other)
    v_ok = np.isfinite(v_own) & np.isfinite(v_other)
    fa = np.stack([a_own, a_own - a_other], axis=1)
    fv = np.stack([v_own, v_own - v_other], axis=1)
    return np.concatenate([fa, fv], axis=1), fa, a_ok, v_ok


def _classifier():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))


def _fit(X, y, groups):
    """Fit a classifier; also its 5-fold (grouped by utterance) out-of-fold probabilities."""
    from sklearn.model_selection import GroupKFold

    clf = _classifier().fit(X, y)
    oof = np.full(len(y), np.nan)
    n_groups = len(np.unique(groups))
    folds = min(5, n_groups)
    if folds >= 2:
        for train, test in GroupKFold(n_splits=folds).split(X, y, groups):
            if len(np.unique(y[train])) < 2:
                continue
            oof[test] = _classifier().fit(X[train], y[train]).predict_proba(X[test])[:, 1]
    return clf, oof


def _describe(clf, names):
    scaler, lr = clf.steps[0][1], clf.steps[1][1]
    coef = lr.coef_[0] / scaler.scale_  # on the raw features
    intercept = float(lr.intercept_[0] - np.sum(lr.coef_[0] * scaler.mean_ / scaler.scale_))
    return {"features": names, "coef": [round(float(c), 6) for c in coef], "intercept": round(intercept, 6)}


def benjamini_hochberg(p, fdr):
    """Boolean mask of the p-values (NaN: not tested) rejected at false-discovery rate `fdr`."""
    p = np.asarray(p, dtype=np.float64)
    tested = np.flatnonzero(np.isfinite(p))
    out = np.zeros(len(p), bool)
    if not len(tested):
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    below = p[order] <= fdr * np.arange(1, len(order) + 1) / len(order)
    if below.any():
        out[order[:np.flatnonzero(below).max() + 1]] = True
    return out


def joint_pvalues(z_audio, z_visual):
    """max_m(Phi(z_m))^k over the k available (finite) modalities; NaN where none is."""
    from scipy.special import ndtr

    p = np.stack([ndtr(z_audio), ndtr(z_visual)])
    k = np.isfinite(p).sum(axis=0)
    with np.errstate(invalid="ignore"):
        worst = np.nanmax(np.where(np.isfinite(p), p, -np.inf), axis=0)
        return np.where(k > 0, worst ** np.maximum(k, 1), np.nan)


def cleanse(utts, utt2spk, audio, face=None, seed=0, peculiar_z=2.0, threshold=0.5, num_synthetic=20000,
            subtract_mean=True, fine="joint", fdr=0.05, sources=("audio embeddings", "face embeddings")):
    """Run both steps. utts: utterance ids; utt2spk: {utt: speaker}; audio/face: {utt: 1-D vector}, or
    (rows, X) from `utterance_matrix` (X float32, rows positions in utts; X is centred and normalised in
    place), audio for every utterance, face for those that have one; fine: "joint" or "synthetic";
    sources: the names of the audio and face tables in errors. An embedding that the mean subtraction
    reduces to zero (identical embeddings) is an AvtkError naming its table and utterance
    (`avtk.scoring.check_centred`, the rule of `avtk score --subtract-mean`). Returns a `Result`."""
    utts = list(utts)
    if not utts:
        raise AvtkError("cleanse: no utterances")
    face = {} if face is None else face
    labels = [utt2spk[u] for u in utts]
    speakers = sorted(set(labels))
    if len(speakers) < 2:
        raise AvtkError(f"cleanse: at least two speakers are needed, got {len(speakers)}")
    if not 0 < threshold < 1:
        raise AvtkError(f"cleanse: threshold {threshold} is not strictly between 0 and 1")
    if not peculiar_z > 0:
        raise AvtkError(f"cleanse: peculiar_z {peculiar_z} must be positive")
    if fine not in ("joint", "synthetic"):
        raise AvtkError(f"cleanse: unknown fine step {fine!r}; choose joint or synthetic")
    if not 0 < fdr < 1:
        raise AvtkError(f"cleanse: fdr {fdr} is not strictly between 0 and 1")
    spk_index = {s: i for i, s in enumerate(speakers)}
    spk = np.array([spk_index[s] for s in labels], dtype=np.int64)
    n, S = len(utts), len(speakers)

    def prepare(X, rows, source):
        """Centre and normalise float32 rows in place, a block at a time (no full-size temporaries)."""
        mean = X.mean(axis=0, dtype=np.float64) if subtract_mean else np.zeros(X.shape[1])
        for a in range(0, len(X), CHUNK):
            x = X[a:a + CHUNK].astype(np.float64) - mean
            check_centred(X[a:a + CHUNK], x, [utts[i] for i in rows[a:a + CHUNK]], source)
            X[a:a + CHUNK] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return X

    audio_rows, XA = _as_rows(audio, utts)
    if len(audio_rows) < n:
        first = np.setdiff1d(np.arange(n), audio_rows)[0]
        raise AvtkError(f"cleanse: no audio embedding for utterance {utts[first]!r}")
    A = Modality("audio", prepare(XA, audio_rows, sources[0]), spk, S)
    face_rows, XV = _as_rows(face, utts)
    V = Modality("visual", prepare(XV, face_rows, sources[1]), spk[face_rows], S) if len(face_rows) else None
    vrow = np.full(n, -1, dtype=np.int64)  # utterance index -> row of V
    vrow[face_rows] = np.arange(len(face_rows))

    def features_for(idx, lab):
        a_own, a_other = A.score(idx, lab)
        v_own = np.full(len(idx), np.nan)
        v_other = np.full(len(idx), np.nan)
        if V is not None:
            has = vrow[idx] >= 0
            if has.any():
                v_own[has], v_other[has] = V.score(vrow[idx][has], lab[has])
        return a_own, a_other, v_own, v_other

    def coarse(a_own, a_other, v_own, v_other):
        a_low, a_neg = _peculiar(a_own, a_other, A, peculiar_z)
        if V is not None:
            v_low, v_neg = _peculiar(v_own, v_other, V, peculiar_z)
        else:
            v_low = v_neg = np.zeros(len(a_own), bool)
        return a_low, a_neg, v_low, v_neg

    everyone = np.arange(n)
    a_own, a_other, v_own, v_other = features_for(everyone, spk)
    a_low, a_neg, v_low, v_neg = coarse(a_own, a_other, v_own, v_other)
    peculiar = a_low | a_neg | v_low | v_neg
    F_av, F_a, a_ok, v_ok = _features(a_own, a_other, v_own, v_other)

    # step 2: classifiers trained on synthetic mislabels of the same set
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(a_ok)
    if len(eligible) < MIN_CLASS:
        raise AvtkError(f"cleanse: only {len(eligible)} utterances have another utterance of their speaker; "
                        f"need at least {MIN_CLASS} to learn the decision")
    sample = np.sort(rng.choice(eligible, size=min(num_synthetic, len(eligible)), replace=False))
    new = (spk[sample] + rng.integers(1, S, size=len(sample))) % S
    s_feats = features_for(sample, new)
    s_low = coarse(*s_feats)
    s_peculiar = s_low[0] | s_low[1] | s_low[2] | s_low[3]
    sF_av, sF_a, s_aok, s_vok = _features(*s_feats)
    groups = np.concatenate([sample, sample])
    y = np.concatenate([np.zeros(len(sample)), np.ones(len(sample))])
    T_av = np.concatenate([F_av[sample], sF_av])
    T_a = np.concatenate([F_a[sample], sF_a])
    ok_a = np.concatenate([a_ok[sample], s_aok])
    ok_v = ok_a & np.concatenate([v_ok[sample], s_vok])
    pec_train = np.concatenate([peculiar[sample], s_peculiar])

    def trainable(mask):
        return min(int(np.sum(y[mask] == 0)), int(np.sum(y[mask] == 1))) >= MIN_CLASS

    if not trainable(ok_a):
        raise AvtkError("cleanse: too few synthetic examples to train the audio classifier")
    clf_a, oof_a = _fit(T_a[ok_a], y[ok_a], groups[ok_a])
    classifiers = {"audio": _describe(clf_a, ["audio_own", "audio_margin"])}
    oof = np.full(len(y), np.nan)
    oof[ok_a] = oof_a
    clf_av = None
    if trainable(ok_v):
        clf_av, oof_av = _fit(T_av[ok_v], y[ok_v], groups[ok_v])
        classifiers["audio_visual"] = _describe(clf_av, ["audio_own", "audio_margin", "visual_own", "visual_margin"])
        oof[ok_v] = oof_av
    elif len(face_rows):
        log.warning("too few synthetic examples with faces to train the audio-visual classifier; "
                    "every utterance is judged on audio alone")

    prob = np.full(n, np.nan)
    use_av = a_ok & v_ok & (clf_av is not None)
    use_a = a_ok & ~use_av
    if use_av.any():
        prob[use_av] = clf_av.predict_proba(F_av[use_av])[:, 1]
    if use_a.any():
        prob[use_a] = clf_a.predict_proba(F_a[use_a])[:, 1]
    with np.errstate(invalid="ignore"):
        synthetic_noisy = peculiar & (prob > threshold)
    z_a = A.z(a_own)
    z_v = V.z(v_own) if V is not None else np.full(n, np.nan)
    p_joint = joint_pvalues(z_a, z_v)
    joint_noisy = peculiar & benjamini_hochberg(p_joint, fdr)
    noisy = joint_noisy if fine == "joint" else synthetic_noisy

    # estimates of the rule's behaviour from the synthetic set (out-of-fold probabilities)
    with np.errstate(invalid="ignore"):
        flagged = pec_train & (oof > threshold)
    judged = np.isfinite(oof)
    pos, neg = judged & (y == 1), judged & (y == 0)
    synthetic = {
        "utterances_sampled": int(len(sample)),
        "classifier_examples": {"audio": int(ok_a.sum()), "audio_visual": int(ok_v.sum()) if clf_av else 0},
        "coarse_recall": _ratio(np.sum(pos & pec_train), np.sum(pos)),
        "recall": _ratio(np.sum(pos & flagged), np.sum(pos)),
        "false_flag_rate": _ratio(np.sum(neg & flagged), np.sum(neg)),
    }

    stats = {
        "utterances": n,
        "speakers": S,
        "missing": {"audio": 0, "visual": int(n - len(face_rows))},
        "audio_only": int(np.sum(a_ok & ~(v_ok & (clf_av is not None)))),
        "not_judged": int(np.sum(~a_ok)),
        "peculiar": int(peculiar.sum()),
        "peculiar_by_reason": {
            "audio_low": int(a_low.sum()), "audio_negative_margin": int(a_neg.sum()),
            "visual_low": int(v_low.sum()), "visual_negative_margin": int(v_neg.sum()),
        },
        "fine": fine,
        "noisy": int(noisy.sum()),
        "clean": int(n - noisy.sum()),
        "noisy_by_method": {"joint": int(joint_noisy.sum()), "synthetic": int(synthetic_noisy.sum())},
        "thresholds": {
            "peculiar_z": peculiar_z,
            "fdr": fdr,
            "joint_p_below": float(np.nanmax(np.where(joint_noisy, p_joint, np.nan))) if joint_noisy.any() else None,
            "audio": {"median": round(A.median, 6), "robust_sd": round(A.scale, 6),
                      "own_below": round(A.median - peculiar_z * A.scale, 6)},
            "probability": threshold,
        },
        "classifiers": classifiers,
        "synthetic": synthetic,
        "seed": seed,
    }
    if V is not None:
        stats["thresholds"]["visual"] = {"median": round(V.median, 6), "robust_sd": round(V.scale, 6),
                                         "own_below": round(V.median - peculiar_z * V.scale, 6)}
    return Result(utts, labels, a_own, v_own, a_other, v_other, z_a, z_v, peculiar,
                  p_joint if fine == "joint" else prob, noisy, stats)


def _ratio(a, b):
    return round(float(a) / float(b), 6) if b else None


def evaluate(result, truth):
    """Precision/recall of the noisy flags (and the coarse step's recall) against a set of mislabelled
    utterance ids."""
    index = {u: i for i, u in enumerate(result.utts)}
    true = np.zeros(len(result.utts), bool)
    for u in truth:
        if u in index:
            true[index[u]] = True
    tp = int(np.sum(true & result.noisy))
    fp = int(np.sum(~true & result.noisy))
    fn = int(np.sum(true & ~result.noisy))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = None
    if precision is not None and recall is not None and precision + recall > 0:
        f1 = round(2 * precision * recall / (precision + recall), 6)
    return {
        "mislabelled": int(true.sum()),
        "true_positives": tp, "false_positives": fp, "false_negatives": fn,
        "precision": precision, "recall": recall, "f1": f1,
        "coarse_recall": _ratio(np.sum(true & result.peculiar), true.sum()),
    }


def fmt(x, digits=4):
    """A similarity for text lists: fixed digits, `nan` when unavailable."""
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"
