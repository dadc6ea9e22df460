"""Compute EER, minDCF, minCllr (and Cllr, actDCF of calibrated scores) from a scores file; DET plots."""
import json
import os

import numpy as np

from avtk.command import make_parser, number
from avtk.data.trials import read_trials
from avtk.errors import AvtkError
from avtk.fusion import align, read_scores
from avtk.io.atomic import atomic_group, atomic_open, atomic_path
from avtk.metrics import act_dcf, cllr, eer, error_rates, min_cllr, min_dcf


def get_parser():
    p = make_parser(
        "Compute verification metrics from a scores file of lines `enroll test score [target|nontarget]` "
        "(as `avtk score` and `avtk fuse` write): EER, minDCF at each --p-target (c_miss = c_fa = 1), minCllr "
        "(bits; Cllr after the optimal monotone PAV calibration) and the trial counts. With --calibrated "
        "(the scores are natural-log LLRs, e.g. from `avtk fuse --method logreg`) also Cllr (bits) and actDCF "
        "at each --p-target (decisions at the Bayes threshold -logit(p)); these two are meaningless for "
        "uncalibrated scores such as raw cosines."
    )
    p.add_argument("scores", help="scores file (labels in it, or from --trials)")
    p.add_argument("--trials",
                   help="trials file with labels, for a scores file without them: the scores file must list "
                        "the same trials (enroll, test) in the same order")
    p.add_argument("--map-paths", action="store_true",
                   help="--trials keys are relative wav paths (seed style): map them to utterance ids")
    p.add_argument("--p-target", type=number(0, 1, low_open=True, high_open=True), nargs="+", default=[0.01, 0.05],
                   help="priors for minDCF and actDCF")
    p.add_argument("--calibrated", action="store_true",
                   help="scores are calibrated LLRs: also report Cllr and actDCF")
    p.add_argument("--json", help="also write every metric to this JSON file")
    p.add_argument("--det-plot", help="draw the DET curve (probit axes, EER marked) into this image (.png, .pdf, "
                                      ".svg); needs matplotlib")
    p.add_argument("--hist-plot", help="draw the target/nontarget score histograms into this image; needs "
                                       "matplotlib")
    return p


def load_labelled(scores_path, trials_path=None, map_paths=False):
    """(scores, labels) of a scores file, labels from the file or from `trials_path` (same trials, same
    order; a key mismatch or a trial without a score is an AvtkError naming the line)."""
    sf = read_scores(scores_path)
    if not trials_path:
        if sf.labels is None:
            raise AvtkError(f"{scores_path}:{sf.lineno[0]}: no target|nontarget label: give --trials")
        return sf.scores, sf.labels
    trials = read_trials(trials_path, map_paths=map_paths)
    if trials.labels is None:
        raise AvtkError(f"{trials_path}: the trials have no target|nontarget labels")
    data = align([sf], trials, os.fspath(trials_path))
    missing = np.isnan(data.scores[:, 0])
    if missing.any():
        i = int(np.argmax(missing))
        raise AvtkError(f"{trials_path}:{data.lineno[i]}: trial {data.enroll[i]} {data.test[i]} has no score "
                        f"in {scores_path} ({int(missing.sum())} trials unscored)")
    return data.scores[:, 0], data.labels


def _figure():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise AvtkError("--det-plot and --hist-plot need matplotlib: pip install 'avtk[plot]'") from None
    return Figure


def _save(fig, path):
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise AvtkError(f"{path}: unsupported image type {fmt!r} (use .png, .pdf or .svg)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)


def plot_det(path, scores, labels, p_targets=(), title=None):
    """DET curve (miss vs false-alarm rate on normal-deviate axes), EER and minDCF points marked."""
    from scipy.special import ndtri  # scipy comes with scikit-learn

    Figure = _figure()
    fnr, fpr, _ = error_rates(scores, labels)
    n_min = min(int(np.sum(labels)), int(np.sum(1 - np.asarray(labels))))
    limits = np.array([1e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01])
    lo = limits[max(0, np.searchsorted(limits, 1.0 / n_min, side="right") - 1)]  # at most one error
    hi = 0.6
    ticks = np.array([1e-5, 1e-4, 1e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6])
    ticks = ticks[(ticks >= lo) & (ticks <= hi)]

    def probit(x):
        return ndtri(np.clip(x, lo, hi))

    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot()
    ax.plot(probit(fpr), probit(fnr), color="C0", lw=1.5, label="DET")
    e, _ = eer(scores, labels)
    ax.plot(probit(e), probit(e), "o", color="C3", label=f"EER {100 * e:.2f} %")
    for j, p in enumerate(p_targets):
        cost = fnr * p + fpr * (1 - p)
        k = int(np.argmin(cost))
        ax.plot(probit(fpr[k]), probit(fnr[k]), "s", color=f"C{j + 1}", ms=5,
                label=f"minDCF(p={p:g}) {cost[k] / min(p, 1 - p):.3f}")
    ax.plot(probit([lo, hi]), probit([lo, hi]), color="0.7", lw=0.8, ls="--")
    labels_pct = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(probit(ticks), labels_pct)
    ax.set_yticks(probit(ticks), labels_pct)
    ax.set_xlim(probit(lo), probit(hi))
    ax.set_ylim(probit(lo), probit(hi))
    ax.set_xlabel("false alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.grid(True, color="0.9")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_hist(path, scores, labels, title=None):
    """Target and non-target score histograms (densities, shared bins), EER threshold marked."""
    Figure = _figure()
    labels = np.asarray(labels).astype(bool)
    edges = np.histogram_bin_edges(scores, bins=min(100, max(10, int(np.sqrt(len(scores))))))
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    ax.hist(scores[~labels], bins=edges, density=True, alpha=0.55, color="C0", label=f"nontarget ({(~labels).sum()})")
    ax.hist(scores[labels], bins=edges, density=True, alpha=0.55, color="C3", label=f"target ({labels.sum()})")
    e, thr = eer(scores, labels)
    ax.axvline(thr, color="k", lw=0.8, ls="--", label=f"EER threshold ({100 * e:.2f} %)")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def compute(scores, labels, p_targets, calibrated=False):
    """Every metric as a dict (rates as fractions; EER threshold; minDCF/actDCF keyed by `f"{p:g}"`)."""
    e, e_thr = eer(scores, labels)
    out = {
        "trials": int(len(labels)), "target": int(np.sum(labels)), "nontarget": int(len(labels) - np.sum(labels)),
        "eer": e, "eer_threshold": e_thr,
        "min_dcf": {}, "min_dcf_threshold": {},
        "min_cllr": min_cllr(scores, labels),
        "calibrated": bool(calibrated),
    }
    for p in p_targets:
        out["min_dcf"][f"{p:g}"], out["min_dcf_threshold"][f"{p:g}"] = min_dcf(scores, labels, p)
    if calibrated:
        out["cllr"] = cllr(scores, labels)
        out["act_dcf"] = {f"{p:g}": act_dcf(scores, labels, p) for p in p_targets}
    return out


def _finite(value):
    """JSON has no infinities: a threshold of +-inf (reject or accept everything) is written as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def main(args):
    """All outputs (--json, --det-plot, --hist-plot) are written as one atomic group: all appear, or none."""
    with atomic_group(args.json, args.det_plot, args.hist_plot):
        return _main(args)


def _main(args):
    for p in args.p_target:
        if not 0 < p < 1:
            raise AvtkError(f"--p-target {p:g}: must be in (0, 1)")
    if args.det_plot or args.hist_plot:
        _figure()  # fail before the work if matplotlib is missing
    scores, labels = load_labelled(args.scores, args.trials, args.map_paths)
    if labels.min() == labels.max():
        raise AvtkError(f"{args.trials or args.scores}: needs both target and nontarget trials")
    labels = labels.astype(np.int64)
    m = compute(scores, labels, args.p_target, args.calibrated)
    print(f"EER {100 * m['eer']:.3f} %")
    for p in args.p_target:
        print(f"minDCF(p={p:g}) {m['min_dcf'][f'{p:g}']:.4f}")
    print(f"minCllr {m['min_cllr']:.4f}")
    if args.calibrated:
        print(f"Cllr {m['cllr']:.4f}")
        for p in args.p_target:
            print(f"actDCF(p={p:g}) {m['act_dcf'][f'{p:g}']:.4f}")
    print(f"trials {m['trials']} target {m['target']} nontarget {m['nontarget']}")
    if args.json:
        with atomic_open(args.json, "w", encoding="utf-8") as f:
            json.dump(_finite({"scores": os.fspath(args.scores), "p_target": list(args.p_target), **m}), f,
                      indent=2, allow_nan=False)
            f.write("\n")
    title = os.path.basename(args.scores)
    if args.det_plot:
        plot_det(args.det_plot, scores, labels, args.p_target, title)
    if args.hist_plot:
        plot_hist(args.hist_plot, scores, labels, title)
