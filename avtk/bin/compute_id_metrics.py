"""Compute identification metrics from `avtk identify` output: top-k accuracy and open-set DIR at FAR."""
import json
import logging
import os

import numpy as np

from avtk.command import count, make_parser, number
from avtk.errors import AvtkError
from avtk.identify import UNKNOWN, read_enrollment, read_identification
from avtk.io.atomic import atomic_open
from avtk.metrics import dir_at_far, rank_accuracy
from avtk.scoring import read_utt2spk

log = logging.getLogger(__name__)


def get_parser():
    p = make_parser(
        "Identification metrics of an `avtk identify` output file, against the true speakers (--utt2spk) and "
        "the enrolled ones (--enrolled): a probe is genuine when its speaker is enrolled, an impostor when not. "
        "Closed set: top-r accuracy (rank-r identification rate) of the genuine probes at each --rank. Open set "
        "(rank 1, FRVT 2002 watch-list measures): the detection and identification rate DIR (genuine probes "
        "whose top-1 speaker is theirs with a score >= t) at the lowest threshold t whose false alarm rate FAR "
        "(impostor probes with a top-1 score >= t) is <= each --far, and that threshold. Also the rates of the "
        "file's own decisions. An enrollment utterance among the probes is an error: identifying it is no test."
    )
    p.add_argument("identification", help="output of avtk identify")
    p.add_argument("--utt2spk", required=True, help="the true speaker of every probe (e.g. data/test/utt2spk)")
    p.add_argument("--enrolled", required=True,
                   help="the gallery's spk2utt (written by avtk enroll beside its models): the enrolled speakers "
                        "and their enrollment utterances")
    p.add_argument("--rank", type=count(1), nargs="+", default=[1, 5], help="ranks of the closed-set accuracy")
    p.add_argument("--far", type=number(0, 1, low_open=True, high_open=True), nargs="+", default=[0.01, 0.1],
                   help="false alarm rates at which DIR is reported")
    p.add_argument("--json", help="also write every metric to this JSON file")
    return p


def compute(ident, truth, enrolled, ranks, fars, where="identification"):
    """Every metric as a dict (rates as fractions). `ident` an `avtk.identify.Identification`, `truth`
    {utt: speaker}, `enrolled` {speaker: [(utt, line), ...]} (`read_enrollment`)."""
    missing = [u for u in ident.utts if u not in truth]
    if missing:
        raise AvtkError(f"{where}: {len(missing)} utterances have no true speaker in --utt2spk, e.g. {missing[0]!r}")
    strangers = sorted({s for spks in ident.speakers for s in spks} - set(enrolled))
    if strangers:
        raise AvtkError(f"{where}: candidates that --enrolled does not list, e.g. {strangers[0]!r}: the output of "
                        "another gallery?")
    enrollment = {utt: (spk, line) for spk, items in enrolled.items() for utt, line in items}
    for utt in ident.utts:
        if utt in enrollment:
            spk, line = enrollment[utt]
            raise AvtkError(f"{where}: probe {utt!r} is an enrollment utterance of speaker {spk!r} (--enrolled line "
                            f"{line}): identifying it is no test")
    k = ident.scores.shape[1]
    true = [truth[u] for u in ident.utts]
    genuine = np.array([t in enrolled for t in true])
    ranks_found = np.array([spks.index(t) + 1 if t in spks else 0 for t, spks in zip(true, ident.speakers)])
    top1 = ident.scores[:, 0]
    out = {"probes": len(true), "genuine": int(genuine.sum()), "impostor": int((~genuine).sum()),
           "enrolled_speakers": len(enrolled), "candidates": k, "top_accuracy": {}, "dir_at_far": {},
           "threshold_at_far": {}}
    if genuine.any():
        for r in ranks:
            if r > k and len(enrolled) > k:
                raise AvtkError(f"{where}: top-{r} accuracy needs {r} candidates per probe, the file lists {k} "
                                f"(avtk identify --top-k {r})")
            out["top_accuracy"][str(r)] = rank_accuracy(ranks_found[genuine], r)
    if genuine.any() and (~genuine).any():
        scores = np.where(ranks_found[genuine] == 1, top1[genuine], -np.inf)
        for far in fars:
            rate, threshold = dir_at_far(scores, top1[~genuine], far)
            out["dir_at_far"][f"{far:g}"], out["threshold_at_far"][f"{far:g}"] = rate, threshold
    decided = np.array(ident.decisions, dtype=object)
    truth_arr = np.array(true, dtype=object)
    if genuine.any():
        g = decided[genuine]
        out["decisions"] = {"correct": float(np.mean(g == truth_arr[genuine])),
                            "unknown": float(np.mean(g == UNKNOWN))}
        out["decisions"]["wrong_speaker"] = 1.0 - out["decisions"]["correct"] - out["decisions"]["unknown"]
    if (~genuine).any():
        out.setdefault("decisions", {})["false_alarm"] = float(np.mean(decided[~genuine] != UNKNOWN))
    return out


def _pct(x):
    return f"{100 * x:.3f} %"


def main(args):
    ident = read_identification(args.identification)
    truth = read_utt2spk(args.utt2spk)
    enrolled = read_enrollment(spk2utt=args.enrolled)
    m = compute(ident, truth, enrolled, args.rank, args.far, args.identification)
    print(f"probes {m['probes']} genuine {m['genuine']} impostor {m['impostor']} "
          f"enrolled {m['enrolled_speakers']}")
    for r, acc in m["top_accuracy"].items():
        print(f"top-{r} accuracy {_pct(acc)}")
    for far, rate in m["dir_at_far"].items():
        print(f"DIR at FAR {100 * float(far):g} % {_pct(rate)} (threshold {m['threshold_at_far'][far]:.4f})")
    d = m.get("decisions", {})
    if "correct" in d:
        print(f"decisions (genuine): correct {_pct(d['correct'])} wrong speaker {_pct(d['wrong_speaker'])} "
              f"unknown {_pct(d['unknown'])}")
    if "false_alarm" in d:
        print(f"decisions (impostor): false alarm {_pct(d['false_alarm'])}")
    if not m["genuine"]:
        log.warning("no genuine probes (none of their speakers is enrolled): no accuracy or DIR")
    elif not m["impostor"]:
        log.warning("no impostor probes (every probe's speaker is enrolled): no open-set DIR at FAR")
    if args.json:
        finite = {**m, "threshold_at_far": {k: (v if np.isfinite(v) else None)
                                            for k, v in m["threshold_at_far"].items()}}
        with atomic_open(args.json, "w", encoding="utf-8") as f:
            json.dump({"identification": os.fspath(args.identification), **finite}, f, indent=2, allow_nan=False)
            f.write("\n")
