"""Score trials by the cosine similarity of their embeddings."""
import logging

import numpy as np

from avtk.command import make_parser
from avtk.data.trials import read_trials
from avtk.io.ark import load_table
from avtk.io.atomic import atomic_open
from avtk.scoring import cosine_scores


def get_parser():
    p = make_parser(
        "Cosine-score every trial of a trials file (Kaldi `enroll test target|nontarget` or the seed's "
        "`1|0 enroll test`) from an embedding table. Writes one line per trial, in trials order: "
        "`enroll test score [target|nontarget]`."
    )
    p.add_argument("--trials", required=True, help="trials file")
    p.add_argument("--subtract-mean", action="store_true",
                   help="subtract the mean of the scored embeddings before the cosine")
    p.add_argument("--map-paths", action="store_true",
                   help="trials keys are relative wav paths (seed style): map them to utterance ids")
    p.add_argument("rspecifier", help="embeddings, e.g. scp:exp/x/emb.scp")
    p.add_argument("scores", help="output scores file")
    return p


def main(args):
    trials = read_trials(args.trials, map_paths=args.map_paths)
    table = load_table(args.rspecifier)
    mean = None
    if args.subtract_mean:  # over every vector of the table (each row of crop sets)
        mean = np.concatenate([np.asarray(v, np.float32).reshape(-1, np.shape(v)[-1]) for v in table.values()]).mean(0)
    scores = cosine_scores(table, trials, mean, where=args.trials)
    names = {1: "target", 0: "nontarget"}
    with atomic_open(args.scores) as f:
        for i, (e, t, s) in enumerate(zip(trials.enroll, trials.test, scores)):
            label = f" {names[int(trials.labels[i])]}" if trials.labels is not None else ""
            f.write(f"{e} {t} {s:.6f}{label}\n")
    logging.getLogger(__name__).info("scored %d trials into %s", len(scores), args.scores)
