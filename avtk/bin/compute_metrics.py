"""Compute EER and minDCF from a scores file."""
import numpy as np

from avtk.command import make_parser
from avtk.data.table import read_lines
from avtk.errors import AvtkError
from avtk.metrics import eer, min_dcf


def get_parser():
    p = make_parser(
        "Compute verification metrics from a scores file of lines `enroll test score target|nontarget` "
        "(as `avtk score` writes): EER, minDCF at each --p-target (c_miss = c_fa = 1) and the trial counts."
    )
    p.add_argument("scores", help="scores file with labels")
    p.add_argument("--p-target", type=float, nargs="+", default=[0.01, 0.05], help="priors for minDCF")
    return p


def read_scores(path):
    labels = {"target": 1, "nontarget": 0}
    scores, truth = [], []
    for line in read_lines(path, min_fields=4):
        fields = line.value.split()
        if len(fields) != 3 or fields[2] not in labels:
            raise AvtkError(f"{path}:{line.lineno}: expected `enroll test score target|nontarget`")
        try:
            scores.append(float(fields[1]))
        except ValueError:
            raise AvtkError(f"{path}:{line.lineno}: score {fields[1]!r} is not a number") from None
        truth.append(labels[fields[2]])
    return np.array(scores), np.array(truth)


def main(args):
    scores, labels = read_scores(args.scores)
    if labels.min() == labels.max():
        raise AvtkError(f"{args.scores}: needs both target and nontarget trials")
    print(f"EER {100 * eer(scores, labels)[0]:.3f} %")
    for p in args.p_target:
        print(f"minDCF(p={p:g}) {min_dcf(scores, labels, p)[0]:.4f}")
    print(f"trials {len(labels)} target {int(labels.sum())} nontarget {int((1 - labels).sum())}")
