"""Score calibration and fusion models: prior-weighted logistic regression, and the model file.

Logistic-regression calibration (one input) or fusion (several) maps the score vector s of a trial to a
natural-log likelihood ratio

    llr = w . s + b

trained on a development trial list with labels by minimising the prior-weighted logistic loss at an
effective target prior pi (default 0.5):

    pi / N_tar * sum_tar log(1 + e^-(llr + logit pi)) + (1 - pi) / N_non * sum_non log(1 + e^(llr + logit pi))

which is Cllr at prior pi (in nats); at pi = 0.5 it is exactly Cllr. Target and non-target trials weigh
pi : 1 - pi whatever their counts. The optimiser is Newton's method with a backtracking line search on
inputs z-normalised by their development mean and standard deviation (for conditioning); the weights are
then mapped back to raw scores. A tiny L2 penalty on the weights (not the bias) keeps the solution finite
when the development trials are separable. No randomness: the same data give the same model, bit for bit.

The model file (`FusionModel.save` / `load`) is small YAML (JSON when the name ends in `.json`), written
atomically, holding the method, the modality names, the weights and bias (on raw scores), the prior, the
per-modality normalisation statistics and, for logreg, one calibration per proper subset of the modalities
(for two modalities: each single modality), used for trials where some modality is missing.

Quality-measure functions (QMF; WeSpeaker's score calibration, wespeaker/bin/score_calibration.py). A logreg
model may also take quality measures of the trial's two utterances (`avtk.quality`: duration, a modality's
AS-Norm cohort mean, a face's number of frames). Each measure q, capped where it has a cap, adds two inputs,
min(q_enroll, q_test) and max(q_enroll, q_test), so that

    llr = w . s + v . [min q_1, max q_1, min q_2, max q_2, ...] + b

is trained exactly as above on the scores and these features together (a linear logistic model minimising
Cllr, as WeSpeaker's; WeSpeaker also adds max - min and max / min of each measure and the embedding norm as a
measure, which avtk leaves out). A measure belongs to a modality (cohort_mean, face_frames) or to the
recording (duration): the calibration for a subset of the modalities uses the recording's measures and those
of its own modalities, so a trial missing its face falls back to the audio calibration with the audio's
quality measures. The model file lists the measures (`quality`) and their weights (`quality_weights`, two
per measure, min then max; each subset its own).
"""
import itertools
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import yaml

from avtk.data.table import read_yaml
from avtk.errors import AvtkError
from avtk.io.atomic import atomic_open

log = logging.getLogger(__name__)
# logistic regression is trusted with at least this many trials of the rarer class per fitted parameter (the
# "events per variable" rule of thumb of Peduzzi et al., J Clin Epidemiol 1996); below it the WARNING of
# `train_model` says the calibration may overfit
MIN_TRIALS_PER_PARAMETER = 10

METHODS = ("mean", "weighted", "zmean", "logreg")
QUALITY_MEASURES = {"duration": False, "cohort_mean": True, "face_frames": True}  # measure -> of a modality?


def _logit(p):
    return float(np.log(p) - np.log1p(-p))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return np.exp(-_softplus(-x))


def train_logreg(scores, labels, prior=0.5, l2=1e-6, max_iter=100, tol=1e-10):
    """Fit llr = scores @ w + b by prior-weighted logistic regression (see the module doc).

    scores: (n,) or (n, m) array of raw scores; labels: 1 target / 0 non-target. Returns (w, b) with
    w of shape (m,) (a 1-element array for 1-d scores) and b a float, both on the raw score scale.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    y = np.asarray(labels).astype(bool)
    if s.ndim != 2 or len(s) != len(y):
        raise ValueError("train_logreg: scores must be (n,) or (n, m) with one label per row")
    if not np.all(np.isfinite(s)):
        raise ValueError("train_logreg: scores must be finite")
    n_tar, n_non = int(y.sum()), int((~y).sum())
    if n_tar == 0 or n_non == 0:
        raise ValueError(f"need both target and non-target trials (got {n_tar} target, {n_non} non-target)")
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    mean, std = s.mean(0), s.std(0)
    std = np.where(std > 0, std, 1.0)
    x = np.hstack([(s - mean) / std, np.ones((len(s), 1))])
    sign = np.where(y, 1.0, -1.0)                                   # +1 target, -1 non-target
    cw = np.where(y, prior / n_tar, (1.0 - prior) / n_non)          # per-trial weight of the loss
    offset = _logit(prior)
    reg = np.full(x.shape[1], l2)
    reg[-1] = 0.0

    def loss(theta):
        z = x @ theta + offset
        return float(cw @ _softplus(-sign * z) + 0.5 * reg @ theta**2)

    theta = np.zeros(x.shape[1])
    f = loss(theta)
    for _ in range(max_iter):
        z = x @ theta + offset
        grad = x.T @ (cw * -sign * _sigmoid(-sign * z)) + reg * theta
        if np.max(np.abs(grad)) < tol:
            break
        p = _sigmoid(z)
        hess = (x * (cw * p * (1.0 - p))[:, None]).T @ x + np.diag(reg) + 1e-12 * np.eye(len(theta))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:  # backtracking (Armijo) line search; Newton's step is usually accepted whole
            cand = theta - t * step
            f_new = loss(cand)
            if f_new <= f - 1e-4 * t * grad @ step or t < 1e-10:
                break
            t *= 0.5
        if f_new >= f:  # no further decrease representable: converged to rounding
            break
        converged = f - f_new <= 1e-15 * max(1.0, f)
        theta, f = cand, f_new
        if converged:
            break
    w = theta[:-1] / std
    b = float(theta[-1] - w @ mean)
    return w, b


@dataclass
class FusionModel:
    """A fusion/calibration model: how to turn per-modality scores into one score.

    method      mean | weighted | zmean | logreg
    modalities  names, in the order of the input score files
    weights     per-modality weights: mean 1/m each; weighted as given; zmean 1/m each on z-normalised
                scores; logreg the trained weights on raw scores (llr = weights . s + bias)
    bias        added after the weighted sum (logreg; 0 otherwise)
    prior       effective prior the logreg model was trained at (None otherwise)
    norm        {modality: {"mean": m, "std": s}}: statistics of the scores the model was trained (or, for
                zmean without development data, applied) on; zmean divides by them, logreg records them
    subsets     logreg only: {"audio": {"weights": [w], "bias": b}, ...}, a calibration for every proper
                non-empty subset of the modalities (key: names joined by '+'), for trials missing some; with
                quality measures each also holds "quality_weights" for the measures it uses (`uses`)
    quality     logreg only, QMF: [{"measure": duration|cohort_mean|face_frames, "modality": name or None,
                "cap": number or None}, ...], the quality measures the model takes (module doc)
    quality_weights
                2 per quality measure (its min and max over the two sides) of the full calibration
    """

    method: str
    modalities: list
    weights: list
    bias: float = 0.0
    prior: "float | None" = None
    norm: dict = field(default_factory=dict)
    subsets: dict = field(default_factory=dict)
    quality: list = field(default_factory=list)
    quality_weights: list = field(default_factory=list)

    def to_dict(self):
        d = {
            "method": self.method,
            "modalities": list(self.modalities),
            "weights": [float(w) for w in self.weights],
            "bias": float(self.bias),
            "prior": None if self.prior is None else float(self.prior),
            "norm": {k: {"mean": float(v["mean"]), "std": float(v["std"])} for k, v in self.norm.items()},
        }
        if self.subsets:
            d["subsets"] = {k: _calibration_dict(v) for k, v in self.subsets.items()}
        if self.quality:
            d["quality"] = [dict(q) for q in self.quality]
            d["quality_weights"] = [float(w) for w in self.quality_weights]
        return d

    def save(self, path):
        """Write the model atomically: JSON if `path` ends in .json, else YAML."""
        d = self.to_dict()
        with atomic_open(path, "w", encoding="utf-8") as f:
            if os.fspath(path).endswith(".json"):
                json.dump(d, f, indent=2)
                f.write("\n")
            else:
                yaml.safe_dump(d, f, sort_keys=False, default_flow_style=None)

    @classmethod
    def load(cls, path):
        """Read a model written by `save` (YAML or JSON); anything malformed is an AvtkError naming the
        file and the key."""
        d = read_yaml(path, "model ")  # the one YAML reader: text rule, repeated keys, errors naming file:line
        return cls.from_dict(d, where=os.fspath(path))

    @classmethod
    def from_dict(cls, d, where="model"):
        if not isinstance(d, dict):
            raise AvtkError(f"{where}: not a model (expected a mapping of keys)")
        unknown = set(d) - {"method", "modalities", "weights", "bias", "prior", "norm", "subsets", "quality",
                            "quality_weights"}
        if unknown:
            raise AvtkError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")

        def need(key, check, what):
            if key not in d:
                raise AvtkError(f"{where}: missing key {key!r}")
            if not check(d[key]):
                raise AvtkError(f"{where}: key {key!r} must be {what}, got {d[key]!r}")
            return d[key]

        def numbers(v):
            return isinstance(v, list) and all(isinstance(x, (int, float)) and np.isfinite(x) for x in v)

        method = need("method", lambda v: v in METHODS, f"one of {', '.join(METHODS)}")
        mods = need("modalities", lambda v: isinstance(v, list) and v and all(isinstance(x, str) for x in v)
                    and len(set(v)) == len(v), "a list of distinct names")
        weights = need("weights", lambda v: numbers(v) and len(v) == len(mods), f"{len(mods)} numbers")
        bias = d.get("bias", 0.0)
        if not isinstance(bias, (int, float)) or not np.isfinite(bias):
            raise AvtkError(f"{where}: key 'bias' must be a number, got {bias!r}")
        prior = d.get("prior")
        if prior is not None and not (isinstance(prior, (int, float)) and 0 < prior < 1):
            raise AvtkError(f"{where}: key 'prior' must be in (0, 1), got {prior!r}")
        norm = d.get("norm") or {}
        for name, st in norm.items() if isinstance(norm, dict) else [(None, None)]:
            if name not in mods or not isinstance(st, dict) or not numbers([st.get("mean"), st.get("std")]) \
                    or st["std"] <= 0:
                raise AvtkError(f"{where}: key 'norm' must map modality names to {{mean, std > 0}}, "
                                f"got {name!r}: {st!r}")
        if method == "zmean" and set(norm) != set(mods):
            raise AvtkError(f"{where}: a zmean model needs 'norm' statistics for every modality")
        quality = _check_quality(d.get("quality") or [], mods, method, where)
        qweights = d.get("quality_weights") or []
        if not numbers(qweights) or len(qweights) != 2 * len(quality):
            raise AvtkError(f"{where}: key 'quality_weights' must be {2 * len(quality)} numbers (a min and a max "
                            f"weight per quality measure), got {qweights!r}")
        subsets = d.get("subsets") or {}
        if not isinstance(subsets, dict):
            raise AvtkError(f"{where}: key 'subsets' must be a mapping")
        for key, cal in subsets.items():
            names = str(key).split("+")
            n_q = 2 * len(uses(quality, names))
            if not set(names) <= set(mods) or not isinstance(cal, dict) \
                    or not set(cal) <= {"weights", "bias", "quality_weights"} \
                    or not numbers(cal.get("weights")) or len(cal["weights"]) != len(names) \
                    or not numbers([cal.get("bias")]) or not numbers(cal.get("quality_weights", [])) \
                    or len(cal.get("quality_weights", [])) != n_q:
                raise AvtkError(f"{where}: subsets entry {key!r} must name modalities and hold "
                                f"{len(names)} weights, a bias" + (f" and {n_q} quality_weights" if n_q else "")
                                + f", got {cal!r}")
        return cls(method, list(mods), [float(w) for w in weights], float(bias),
                   None if prior is None else float(prior),
                   {k: {"mean": float(v["mean"]), "std": float(v["std"])} for k, v in norm.items()},
                   {k: _calibration_dict(v) for k, v in subsets.items()}, quality, [float(w) for w in qweights])

    # ------------------------------------------------------------------------------------------------
    def apply(self, scores, quality=None):
        """Fuse a (n, m) array of raw scores, NaN where a modality is missing.

        quality: for a QMF model, {quality_label(q): (n, 2) array of the enrollment and test sides' raw values}
        for every measure q of `self.quality` (NaN allowed only on trials that do not use it); a model without
        quality measures takes none. Returns (fused, available): fused[i] is NaN only where every modality is
        missing; available is the (n, m) boolean mask of present scores. Missing modalities:
          logreg      the calibration trained for exactly the available subset (`subsets`), with the quality
                      measures of that subset;
          mean, weighted, zmean
                      the weighted mean of the available (normalised) scores times the sum of all weights,
                      i.e. a missing score is imputed by the weighted mean of the others.
        A QMF model without its quality measures, or a quality value missing or not finite where a trial uses
        it, is an AvtkError naming the measure and the trial (1-based).
        """
        s = check_scores(scores, self.modalities)
        if s.ndim != 2 or s.shape[1] != len(self.modalities):
            raise AvtkError(f"{self.method} model has {len(self.modalities)} modalities "
                            f"({', '.join(self.modalities)}), got {s.shape[-1]} score inputs")
        avail = ~np.isnan(s)
        fused = np.full(len(s), np.nan)
        check_quality_inputs(self.quality, quality, len(s))
        if self.method == "logreg":
            for key, idx in self._subset_items():
                mask = np.all(avail[:, idx], 1) & (avail.sum(1) == len(idx))
                w, b = self._calibration(key, idx)
                x = s[mask][:, idx]
                if self.quality:
                    x = np.hstack([x, quality_features(self.quality, quality, [self.modalities[i] for i in idx],
                                                       mask)])
                fused[mask] = x @ w + b
            return fused, avail
        x = s
        if self.method == "zmean":
            mean = np.array([self.norm[m]["mean"] for m in self.modalities])
            std = np.array([self.norm[m]["std"] for m in self.modalities])
            x = (s - mean) / std
        w = np.asarray(self.weights, dtype=np.float64)
        wa = np.where(avail, w, 0.0)
        num = np.where(avail, x, 0.0) @ w
        den = wa.sum(1)
        full = avail.all(1)
        fused[full] = num[full] + self.bias
        part = ~full & avail.any(1)
        if np.any(den[part] == 0):
            i = int(np.flatnonzero(part & (den == 0))[0])
            only = "+".join(m for m, a in zip(self.modalities, avail[i]) if a)
            raise AvtkError(f"{self.method}: trials with only {only} cannot be fused: the weights of the "
                            f"available modalities sum to 0")
        fused[part] = num[part] / den[part] * w.sum() + self.bias
        return fused, avail

    def _subset_items(self):
        m = len(self.modalities)
        for k in range(m, 0, -1):
            for idx in itertools.combinations(range(m), k):
                yield "+".join(self.modalities[i] for i in idx), list(idx)

    def _calibration(self, key, idx):
        """(weights on the subset's scores then its quality features, bias) of the calibration for `key`."""
        if len(idx) == len(self.modalities):
            return np.asarray(self.weights + self.quality_weights), self.bias
        if key not in self.subsets:
            raise AvtkError(f"logreg model has no calibration for trials with only {key}")
        cal = self.subsets[key]
        return np.asarray(cal["weights"] + cal.get("quality_weights", [])), cal["bias"]


def _calibration_dict(cal):
    """A subset's calibration as plain floats: {weights, bias[, quality_weights]}."""
    out = {"weights": [float(w) for w in cal["weights"]], "bias": float(cal["bias"])}
    if cal.get("quality_weights"):
        out["quality_weights"] = [float(w) for w in cal["quality_weights"]]
    return out


# ---------------------------------------------------------------------------------------------------- QMF


def quality_spec(measure, modality=None):
    """The model file's entry for a quality measure: {"measure", "modality", "cap"} (caps: avtk.quality.CAPS).
    A measure of a modality (cohort_mean, face_frames) needs its name; duration takes none."""
    from avtk.quality import CAPS

    if measure not in QUALITY_MEASURES:
        raise AvtkError(f"unknown quality measure {measure!r} (one of {', '.join(QUALITY_MEASURES)})")
    if QUALITY_MEASURES[measure] != (modality is not None):
        raise AvtkError(f"quality measure {measure} {'needs' if QUALITY_MEASURES[measure] else 'takes no'} "
                        "modality")
    return {"measure": measure, "modality": modality, "cap": CAPS[measure]}


def quality_label(spec):
    """The name of a quality measure in inputs and messages: `duration`, `cohort_mean(audio)`."""
    return spec["measure"] if spec["modality"] is None else f"{spec['measure']}({spec['modality']})"


def uses(specs, modalities):
    """The quality measures (entries of `specs`) that a calibration of `modalities` (names) takes: the
    recording's own (no modality) and those of the given modalities."""
    return [q for q in specs if q["modality"] is None or q["modality"] in modalities]


def _check_quality(specs, modalities, method, where):
    """The model file's `quality` list checked (AvtkError naming the file otherwise) and normalised."""
    if not isinstance(specs, list):
        raise AvtkError(f"{where}: key 'quality' must be a list of quality measures, got {specs!r}")
    if specs and method != "logreg":
        raise AvtkError(f"{where}: quality measures belong to a logreg model, not {method}")
    out = []
    for q in specs:
        ok = isinstance(q, dict) and set(q) == {"measure", "modality", "cap"} \
            and q["measure"] in QUALITY_MEASURES and (q["modality"] is None or q["modality"] in modalities) \
            and QUALITY_MEASURES[q["measure"]] == (q["modality"] is not None) \
            and (q["cap"] is None or (isinstance(q["cap"], (int, float)) and 0 < q["cap"] < np.inf))
        if not ok:
            raise AvtkError(f"{where}: quality entry {q!r} must be {{measure: duration|cohort_mean|face_frames, "
                            f"modality: one of {', '.join(modalities)} (null for duration), "
                            "cap: a number > 0 or null}")
        out.append({"measure": q["measure"], "modality": q["modality"],
                    "cap": None if q["cap"] is None else float(q["cap"])})
    labels = [quality_label(q) for q in out]
    if len(set(labels)) != len(labels):
        raise AvtkError(f"{where}: quality measures repeat: {', '.join(labels)}")
    return out


def check_quality_inputs(specs, quality, n):
    """AvtkError unless `quality` ({label: (n, 2) sides}) gives exactly the measures of `specs` for n trials."""
    want = [quality_label(q) for q in specs]
    given = sorted(quality or {})
    if specs and quality is None:
        raise AvtkError(f"this calibration takes quality measures ({', '.join(want)}) that were not given "
                        "(apply it with avtk fuse --quality-data, --cohort-stats)")
    if sorted(want) != given:
        raise AvtkError(f"quality measures given ({', '.join(given) or 'none'}) differ from the calibration's "
                        f"({', '.join(want) or 'none'})")
    for label, sides in (quality or {}).items():
        if np.shape(sides) != (n, 2):
            raise AvtkError(f"quality measure {label}: need ({n}, 2) values (the two sides of each trial), "
                            f"got shape {np.shape(sides)}")


def quality_features(specs, quality, modalities, rows):
    """(r, 2k) float64 features [min, max of each measure's two capped sides] of the trials `rows` (a boolean
    mask or indices) for the k measures of `specs` a calibration of `modalities` uses (`uses`). A value that is
    NaN or infinite on one of those trials is an AvtkError naming the measure and the trial (1-based)."""
    rows = np.asarray(rows)
    rows = np.flatnonzero(rows) if rows.dtype == bool else rows
    cols = []
    for q in uses(specs, modalities):
        label = quality_label(q)
        sides = np.asarray(quality[label], np.float64)[rows]
        bad = ~np.isfinite(sides).all(1)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise AvtkError(f"quality measure {label} of trial {int(rows[k]) + 1} is {sides[k].tolist()}: quality "
                            "measures must be finite numbers on every trial that uses them")
        if q["cap"] is not None:
            sides = np.minimum(sides, q["cap"])
        cols += [sides.min(1), sides.max(1)]
    return np.column_stack(cols) if cols else np.empty((len(rows), 0))


def check_scores(scores, modalities):
    """scores as a float64 array, unless one is infinite (NaN means missing): AvtkError naming the trial
    (row, 1-based) and the modality. No fusion, calibration or normalisation is computed from an infinity."""
    s = np.asarray(scores, dtype=np.float64)
    inf = np.isinf(s)
    if inf.any():
        row, col = (int(i) for i in np.argwhere(inf.reshape(len(s), -1))[0])
        name = modalities[col] if s.ndim == 2 and col < len(modalities) else f"input {col + 1}"
        raise AvtkError(f"{name} score of trial {row + 1} is {s.reshape(len(s), -1)[row, col]}: scores must be "
                        "finite (a missing score is NaN)")
    return s


def norm_stats(scores, modalities):
    """{modality: {mean, std}} of the present (non-NaN) scores of each column; std 0 becomes 1."""
    stats = {}
    for j, name in enumerate(modalities):
        col = scores[:, j][~np.isnan(scores[:, j])]
        if len(col) == 0:
            raise AvtkError(f"no scores for modality {name} to estimate its mean and std")
        std = float(col.std())
        stats[name] = {"mean": float(col.mean()), "std": std if std > 0 else 1.0}
    return stats


def train_model(method, modalities, scores, labels=None, weights=None, prior=0.5, quality_specs=(),
                quality=None):
    """Build a FusionModel. scores: (n, m) raw scores, NaN where missing (development scores for logreg
    and zmean-with-dev-data; for zmean without them, the scores to be fused themselves).

    mean      weights 1/m
    weighted  `weights` as given (one per modality)
    zmean     weights 1/m, normalisation from `scores`
    logreg    trained on `labels` at `prior`: the full fusion on trials with every modality, and each
              proper subset on trials having that subset (for two modalities: each single modality,
              trained on every trial that has it, the other missing or not)
    With quality_specs (entries from `quality_spec`; logreg only) and quality ({quality_label: (n, 2) sides
    of the development trials}), a QMF model: each calibration also weighs the min and max of the measures
    it uses (module doc).
    """
    scores = check_scores(scores, modalities)
    m = len(modalities)
    if method not in METHODS:
        raise AvtkError(f"unknown fusion method {method!r} (one of {', '.join(METHODS)})")
    if quality_specs and method != "logreg":
        raise AvtkError(f"quality measures (QMF) calibrate a logreg model, not {method}")
    quality_specs = [dict(q) for q in quality_specs]
    if quality_specs or quality:
        check_quality_inputs(quality_specs, quality, len(scores))
    if method == "mean":
        return FusionModel("mean", list(modalities), [1.0 / m] * m)
    if method == "weighted":
        if weights is None or len(weights) != m:
            raise AvtkError(f"--method weighted needs {m} weights (one per input), got "
                            f"{'none' if weights is None else len(weights)}")
        return FusionModel("weighted", list(modalities), [float(w) for w in weights])
    if method == "zmean":
        return FusionModel("zmean", list(modalities), [1.0 / m] * m, norm=norm_stats(scores, modalities))
    if labels is None:
        raise AvtkError("logreg needs labelled development scores")
    labels = np.asarray(labels).astype(bool)
    model = FusionModel("logreg", list(modalities), [0.0] * m, 0.0, float(prior),
                        norm=norm_stats(scores, modalities), quality=quality_specs)
    avail = ~np.isnan(scores)
    for key, idx in model._subset_items():
        rows = np.all(avail[:, idx], 1)
        n_tar, n_non = int(labels[rows].sum()), int((~labels[rows]).sum())
        if n_tar == 0 or n_non == 0:
            raise AvtkError(f"logreg: the development trials with {key} scores need both target and "
                            f"non-target trials (got {n_tar} target, {n_non} non-target)")
        x = scores[rows][:, idx]
        if quality_specs:
            x = np.hstack([x, quality_features(quality_specs, quality, [modalities[i] for i in idx], rows)])
        params = x.shape[1] + 1
        if min(n_tar, n_non) < MIN_TRIALS_PER_PARAMETER * params:
            log.warning("logreg (%s): %d target and %d non-target development trials for %d parameters (%s): fewer "
                        "than %d of the rarer class per parameter, so the calibration may fit these trials rather "
                        "than the task; use more calibration trials%s", key, n_tar, n_non, params,
                        f"{len(idx)} score{'s' if len(idx) > 1 else ''}, {x.shape[1] - len(idx)} quality features "
                        "and a bias", MIN_TRIALS_PER_PARAMETER, " or fewer quality measures" if quality_specs else "")
        w, b = train_logreg(x, labels[rows], prior)
        w = [float(v) for v in w]
        cal = {"weights": w[:len(idx)], "bias": float(b)}
        if quality_specs:
            cal["quality_weights"] = w[len(idx):]
        if len(idx) == m:
            model.weights, model.bias = cal["weights"], cal["bias"]
            model.quality_weights = cal.get("quality_weights", [])
        else:
            model.subsets[key] = cal
    return model
