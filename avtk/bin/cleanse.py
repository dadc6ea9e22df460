"""Cleanse a training list with audio and face embeddings: flag peculiar, then wrongly labelled utterances.

Step 1 (coarse) compares each utterance with the robust leave-one-out centroid of its labelled speaker
and the nearest other speaker, per modality, and flags "peculiar" utterances (robust z below
-`--peculiar-z` from the median/MAD of all utterances, or a negative margin). Step 2 (fine), `--fine joint`
(default), flags a peculiar utterance noisy when it is atypical in every modality at once: its joint
p-value max(Phi(z_audio), Phi(z_visual))^2 passes the Benjamini-Hochberg procedure at false-discovery
rate `--fdr`. `--fine synthetic` instead uses a logistic regression trained on synthetic mislabels of the
same set (`--seed`) and `--threshold`; it suits networks that did not train on this list. Utterances
without a face embedding are judged on audio alone (counted); a missing audio embedding is an error.
See avtk/cleanse.py for the method.

Outputs (each written atomically): `--out-list` in the seed's format
`spk rel_path duration audio_sim visual_sim clean|noisy` (`nan` for an unavailable similarity);
`--out-dir` the data dir without the noisy utterances (replaced whole); `--report` a JSON report of
counts, thresholds and classifiers, with precision and recall when `--truth` (the corpus's
label_noise.txt, `utt labelled_spk true_spk`) is given; `--hist-plot` histograms of the own-speaker
similarities of clean and noisy utterances.
"""
import json
import logging
import os

import numpy as np

from avtk.cleanse import cleanse, evaluate, fmt, utterance_matrix
from avtk.command import count, make_parser, number
from avtk.data.datadir import load, subset
from avtk.data.table import read_lines
from avtk.errors import AvtkError
from avtk.io.ark import load_vectors
from avtk.io.atomic import atomic_dir, atomic_group, atomic_open, atomic_path

log = logging.getLogger(__name__)


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--audio-emb", required=True, metavar="RSPECIFIER",
                   help="audio embeddings, one per utterance of DATA_DIR, e.g. scp:exp/emb/audio.scp")
    p.add_argument("--face-emb", metavar="RSPECIFIER",
                   help="face embeddings (vectors, or matrices of per-frame rows); utterances without one "
                        "are judged on audio alone")
    p.add_argument("--out-list", metavar="FILE", help="seed-format list (train_all_clean.txt)")
    p.add_argument("--out-dir", metavar="DIR", help="cleaned data dir (noisy utterances removed)")
    p.add_argument("--report", metavar="FILE", help="JSON report: counts, thresholds, classifiers, precision/recall")
    p.add_argument("--hist-plot", metavar="FILE.png", help="histograms of own-speaker similarities, clean vs noisy")
    p.add_argument("--truth", metavar="FILE",
                   help="injected label noise (`utt labelled_spk true_spk` per line) to measure precision/recall")
    p.add_argument("--corpus-root", metavar="DIR",
                   help="write wav.scp paths relative to DIR in --out-list (default: the utterance id "
                        "spk-video-utt as spk/video/utt.wav)")
    p.add_argument("--seed", type=count(0), default=0, help="random seed of the synthetic mislabels")
    p.add_argument("--peculiar-z", type=number(0, low_open=True), default=2.0,
                   help="coarse step: peculiar if an own-speaker similarity's robust z-score is below minus this")
    p.add_argument("--fine", choices=["joint", "synthetic"], default="joint",
                   help="fine step: joint (every modality atypical, FDR-controlled) or synthetic (classifier "
                        "trained on synthetic mislabels)")
    p.add_argument("--fdr", type=number(0, 1, low_open=True), default=0.05,
                   help="fine step joint: false-discovery rate of the Benjamini-Hochberg threshold")
    p.add_argument("--threshold", type=number(0, 1), default=0.5,
                   help="fine step synthetic: noisy if peculiar and the classifier's probability exceeds this")
    p.add_argument("--num-synthetic", type=count(1), default=20000,
                   help="utterances relabelled to train the fine-step classifier (at most all of them)")
    p.add_argument("--no-subtract-mean", dest="subtract_mean", action="store_false",
                   help="do not subtract each modality's mean embedding before the cosine")
    p.add_argument("data_dir", help="training data dir (utt2spk, wav.scp; utt2dur used when present)")
    return p


def _rel_path_from_id(utt):
    """`spk-video-utt` -> `spk/video/utt.wav`; the video id may itself contain '-'."""
    if utt.count("-") >= 2:
        spk, rest = utt.split("-", 1)
        video, name = rest.rsplit("-", 1)
        return f"{spk}/{video}/{name}.wav"
    return utt.replace("-", "/") + ".wav"


def _rel_paths(dd, utts, corpus_root):
    if corpus_root is None:
        return {u: _rel_path_from_id(u) for u in utts}
    if dd.has("segments"):
        raise AvtkError(f"{dd.file('segments')}: with segments an utterance has no file of its own; "
                        "leave out --corpus-root to name list entries by utterance id")
    root = os.path.abspath(corpus_root)
    wav = dd.tables["wav.scp"]
    out = {}
    for u in utts:
        entry = wav.get(u)
        if entry is None:
            raise AvtkError(f"{dd.file('wav.scp')}: no entry for utterance {u!r}")
        path = entry.parsed
        if path.endswith("|"):
            raise AvtkError(f"{dd.file('wav.scp')}:{entry.lineno}: utterance {u!r} is a command, not a file "
                            f"under --corpus-root {corpus_root}")
        rel = os.path.relpath(os.path.abspath(path), root)
        if rel == ".." or rel.startswith(".." + os.sep):
            raise AvtkError(f"{dd.file('wav.scp')}:{entry.lineno}: utterance {u!r}: {path} is not under "
                            f"--corpus-root {corpus_root}")
        out[u] = rel.replace(os.sep, "/")
    return out


def _read_truth(path, utt2spk):
    truth = set()
    outside = []
    for line in read_lines(path, min_fields=1):
        if line.key in truth:
            raise AvtkError(f"{path}:{line.lineno}: duplicate utterance {line.key!r}")
        if line.key not in utt2spk:
            outside.append(line.key)
            continue
        fields = line.value.split()
        if fields and fields[0] != utt2spk[line.key]:
            raise AvtkError(f"{path}:{line.lineno}: utterance {line.key!r} is labelled {fields[0]!r} here but "
                            f"{utt2spk[line.key]!r} in utt2spk")
        truth.add(line.key)
    if outside:
        log.warning("%s: %d utterances are not in the data dir and are ignored", path, len(outside))
    return truth


def _hist_plot(path, result):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AvtkError("--hist-plot needs matplotlib: pip install matplotlib (or the avtk[plot] extra)") from None
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name, sims in ((axes[0], "audio", result.audio_sim), (axes[1], "visual", result.visual_sim)):
        ok = np.isfinite(sims)
        clean, noisy = sims[ok & ~result.noisy], sims[ok & result.noisy]
        bins = np.linspace(-1, 1, 81)
        ax.hist(clean, bins=bins, alpha=0.6, label=f"clean ({len(clean)})")
        ax.hist(noisy, bins=bins, alpha=0.6, label=f"noisy ({len(noisy)})")
        fence = result.stats["thresholds"].get(name, {}).get("own_below")
        if fence is not None:
            ax.axvline(fence, color="k", linestyle="--", linewidth=1, label=f"peculiar below {fence:.2f}")
        ax.set_xlabel(f"{name} similarity to own speaker (robust leave-one-out)")
        ax.set_ylabel("utterances")
        ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext)
    except ValueError as err:
        raise AvtkError(f"--hist-plot {path}: {err}") from None
    finally:
        plt.close(fig)


def main(args):
    """All outputs are written as one atomic group: all appear, or none (their paths are checked first)."""
    with atomic_group(args.out_list, args.report, args.hist_plot, dirs=[args.out_dir]):
        return _main(args)


def _main(args):
    dd = load(args.data_dir)
    utt2spk = dd.utt2spk
    utts = dd.utts
    if args.out_dir and os.path.exists(args.out_dir) and os.path.samefile(args.out_dir, args.data_dir):
        raise AvtkError(f"--out-dir {args.out_dir} is the input data dir; choose another")
    rel = _rel_paths(dd, utts, args.corpus_root) if args.out_list else None
    truth = _read_truth(args.truth, utt2spk) if args.truth else None

    audio_table = load_vectors(args.audio_emb)
    audio = utterance_matrix(audio_table, utts, args.audio_emb, required=True)
    del audio_table  # only the float32 rows of the data dir's utterances are kept
    face = None
    if args.face_emb:
        face_table = load_vectors(args.face_emb)
        face = utterance_matrix(face_table, utts, args.face_emb, required=False, frames=True)
        extra = sum(1 for k in face_table if k not in utt2spk)
        if extra:
            log.info("%s: %d embeddings of utterances not in %s ignored", args.face_emb, extra, args.data_dir)
        del face_table

    result = cleanse(utts, utt2spk, audio, face, seed=args.seed, peculiar_z=args.peculiar_z,
                     threshold=args.threshold, num_synthetic=args.num_synthetic, fine=args.fine, fdr=args.fdr,
                     subtract_mean=args.subtract_mean, sources=(args.audio_emb, args.face_emb))
    stats = dict(result.stats)
    stats["data_dir"] = args.data_dir
    st = stats
    log.info("%d utterances of %d speakers: %d without a face embedding, %d judged on audio alone",
             st["utterances"], st["speakers"], st["missing"]["visual"], st["audio_only"])
    log.info("coarse step: %d peculiar; fine step (%s): %d noisy (joint at FDR %s: %d; synthetic-mislabel "
             "classifier: %d, its own estimate on synthetic mislabels: recall %s, false flags %s)",
             st["peculiar"], st["fine"], st["noisy"], st["thresholds"]["fdr"], st["noisy_by_method"]["joint"],
             st["noisy_by_method"]["synthetic"], st["synthetic"]["recall"], st["synthetic"]["false_flag_rate"])
    if truth is not None:
        stats["truth"] = dict(evaluate(result, truth), file=args.truth)
        t = stats["truth"]
        log.info("against %s: precision %s, recall %s (%d mislabelled; coarse recall %s)",
                 args.truth, t["precision"], t["recall"], t["mislabelled"], t["coarse_recall"])

    if args.out_list:
        dur = dd.utt2dur or {}
        with atomic_open(args.out_list, "w", encoding="utf-8") as f:
            for i, u in enumerate(utts):
                f.write(f"{utt2spk[u]} {rel[u]} {dur.get(u, 0.0):.2f} {fmt(result.audio_sim[i])} "
                        f"{fmt(result.visual_sim[i])} {'noisy' if result.noisy[i] else 'clean'}\n")
    if args.out_dir:
        keep = [u for u, bad in zip(utts, result.noisy) if not bad]
        with atomic_dir(args.out_dir) as tmp:
            subset(args.data_dir, tmp, utt_list=keep)
        log.info("%s: %d of %d utterances kept", args.out_dir, len(keep), len(utts))
    if args.report:
        with atomic_open(args.report, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2)
            f.write("\n")
    if args.hist_plot:
        _hist_plot(args.hist_plot, result)
    return 0
