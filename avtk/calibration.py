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
"""
import itertools
import json
import os
from dataclasses import dataclass, field

import numpy as np
import yaml

from avtk.data.table import read_yaml
from avtk.errors import AvtkError
from avtk.io.atomic import atomic_open

METHODS = ("mean", "weighted", "zmean", "logreg")


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
                non-empty subset of the modalities (key: names joined by '+'), for trials missing some
    """

    method: str
    modalities: list
    weights: list
    bias: float = 0.0
    prior: "float | None" = None
    norm: dict = field(default_factory=dict)
    subsets: dict = field(default_factory=dict)

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
            d["subsets"] = {
                k: {"weights": [float(w) for w in v["weights"]], "bias": float(v["bias"])}
                for k, v in self.subsets.items()
            }
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
        unknown = set(d) - {"method", "modalities", "weights", "bias", "prior", "norm", "subsets"}
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
        subsets = d.get("subsets") or {}
        if not isinstance(subsets, dict):
            raise AvtkError(f"{where}: key 'subsets' must be a mapping")
        for key, cal in subsets.items():
            names = str(key).split("+")
            if not set(names) <= set(mods) or not isinstance(cal, dict) \
                    or not numbers(cal.get("weights")) or len(cal["weights"]) != len(names) \
                    or not numbers([cal.get("bias")]):
                raise AvtkError(f"{where}: subsets entry {key!r} must name modalities and hold "
                                f"{len(names)} weights and a bias, got {cal!r}")
        return cls(method, list(mods), [float(w) for w in weights], float(bias),
                   None if prior is None else float(prior),
                   {k: {"mean": float(v["mean"]), "std": float(v["std"])} for k, v in norm.items()},
                   {k: {"weights": [float(w) for w in v["weights"]], "bias": float(v["bias"])}
                    for k, v in subsets.items()})

    # ------------------------------------------------------------------------------------------------
    def apply(self, scores):
        """Fuse a (n, m) array of raw scores, NaN where a modality is missing.

        Returns (fused, available): fused[i] is NaN only where every modality is missing; available is
        the (n, m) boolean mask of present scores. Missing modalities:
          logreg      the calibration trained for exactly the available subset (`subsets`);
          mean, weighted, zmean
                      the weighted mean of the available (normalised) scores times the sum of all weights,
                      i.e. a missing score is imputed by the weighted mean of the others.
        """
        s = check_scores(scores, self.modalities)
        if s.ndim != 2 or s.shape[1] != len(self.modalities):
            raise AvtkError(f"{self.method} model has {len(self.modalities)} modalities "
                            f"({', '.join(self.modalities)}), got {s.shape[-1]} score inputs")
        avail = ~np.isnan(s)
        fused = np.full(len(s), np.nan)
        if self.method == "logreg":
            for key, idx in self._subset_items():
                mask = np.all(avail[:, idx], 1) & (avail.sum(1) == len(idx))
                w, b = self._calibration(key, idx)
                fused[mask] = s[mask][:, idx] @ w + b
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
        if len(idx) == len(self.modalities):
            return np.asarray(self.weights), self.bias
        if key not in self.subsets:
            raise AvtkError(f"logreg model has no calibration for trials with only {key}")
        return np.asarray(self.subsets[key]["weights"]), self.subsets[key]["bias"]


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


def train_model(method, modalities, scores, labels=None, weights=None, prior=0.5):
    """Build a FusionModel. scores: (n, m) raw scores, NaN where missing (development scores for logreg
    and zmean-with-dev-data; for zmean without them, the scores to be fused themselves).

    mean      weights 1/m
    weighted  `weights` as given (one per modality)
    zmean     weights 1/m, normalisation from `scores`
    logreg    trained on `labels` at `prior`: the full fusion on trials with every modality, and each
              proper subset on trials having that subset (for two modalities: each single modality,
              trained on every trial that has it, the other missing or not)
    """
    scores = check_scores(scores, modalities)
    m = len(modalities)
    if method not in METHODS:
        raise AvtkError(f"unknown fusion method {method!r} (one of {', '.join(METHODS)})")
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
                        norm=norm_stats(scores, modalities))
    avail = ~np.isnan(scores)
    for key, idx in model._subset_items():
        rows = np.all(avail[:, idx], 1)
        n_tar, n_non = int(labels[rows].sum()), int((~labels[rows]).sum())
        if n_tar == 0 or n_non == 0:
            raise AvtkError(f"logreg: the development trials with {key} scores need both target and "
                            f"non-target trials (got {n_tar} target, {n_non} non-target)")
        w, b = train_logreg(scores[rows][:, idx], labels[rows], prior)
        if len(idx) == m:
            model.weights, model.bias = [float(v) for v in w], float(b)
        else:
            model.subsets[key] = {"weights": [float(v) for v in w], "bias": float(b)}
    return model
