"""Score trials by the cosine similarity of their embeddings, optionally AS-Norm normalised."""
import logging
import os
import time

from avtk.command import count, make_parser
from avtk.data.trials import read_trials
from avtk.errors import AvtkError
from avtk.io.ark import load_vectors
from avtk.io.atomic import atomic_group, atomic_open
from avtk.quality import write_cohort_means
from avtk.scoring import (
    DEFAULT_TOP_N, check_duplicate_trials, make_cohort, missing_message, missing_utterances, read_utt2spk,
    score_trials, subset_trials, table_mean,
)

log = logging.getLogger(__name__)


def get_parser():
    p = make_parser(
        "Cosine-score every trial of a trials file (Kaldi `enroll test target|nontarget`, the seed's "
        "`1|0 enroll test`, or unlabeled `enroll test`) from an embedding table, optionally with adaptive "
        "symmetric score normalisation (AS-Norm) against a cohort. Writes one line per trial, in trials order: "
        "`enroll test score [target|nontarget]`. Crop-set embeddings ((1+N) x dim, from extract-embeddings "
        "--seed-crops) score (cos(whole, whole) + mean crop cosine) / 2, and their AS-Norm cohort statistics "
        "use the whole-utterance row. A repeated trial, a trial whose utterance has no embedding (unless "
        "--allow-missing), a NaN, infinite or all-zero embedding, and an AS-Norm cohort whose top-N scores have "
        "no spread (standard deviation below 1e-5) are errors naming the table and utterance."
    )
    p.add_argument("--trials", required=True, help="trials file")
    p.add_argument("--subtract-mean", action="store_true",
                   help="subtract the mean of the scored embeddings (every vector of the table) before the cosine")
    p.add_argument("--mean-from", metavar="RSPECIFIER",
                   help="subtract the mean of this table's embeddings instead (e.g. the training embeddings)")
    p.add_argument("--cohort", metavar="RSPECIFIER",
                   help="AS-Norm cohort embeddings (usually one per training speaker); enables AS-Norm. The mean "
                        "of --subtract-mean or --mean-from is subtracted from them too")
    p.add_argument("--cohort-utt2spk", metavar="FILE",
                   help="utt2spk of the --cohort table's utterances: the cohort becomes one member per speaker, "
                        "the mean of its L2-normalised utterance embeddings")
    p.add_argument("--top-n", type=count(2), default=DEFAULT_TOP_N,
                   help="AS-Norm: the number of highest cohort scores of each side that give its mean and "
                        "standard deviation (the whole cohort when it is smaller)")
    p.add_argument("--write-quality", metavar="FILE",
                   help="AS-Norm only: also write each scored utterance's mean of its top-N cohort cosines, "
                        "`<utt> <mean>` lines sorted by key: a quality measure for avtk fuse --cohort-stats (QMF)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip trials whose utterances have no embedding (with a warning) and list them, "
                        "`enroll test` per line, in SCORES.missing")
    p.add_argument("--map-paths", action="store_true",
                   help="trials keys are relative wav paths (seed style): map them to utterance ids")
    p.add_argument("rspecifier", help="embeddings, e.g. scp:exp/x/emb.scp")
    p.add_argument("scores", help="output scores file")
    return p


def main(args):
    if args.subtract_mean and args.mean_from:
        raise AvtkError("--subtract-mean and --mean-from are alternatives: give one")
    if args.cohort_utt2spk and not args.cohort:
        raise AvtkError("--cohort-utt2spk needs --cohort")
    if args.write_quality and not args.cohort:
        raise AvtkError("--write-quality writes AS-Norm cohort statistics: it needs --cohort")
    if args.write_quality and os.path.abspath(args.write_quality) == os.path.abspath(args.scores):
        raise AvtkError(f"--write-quality {args.write_quality} is also the scores file: give each its own name")
    trials = read_trials(args.trials, map_paths=args.map_paths)
    check_duplicate_trials(trials, args.trials)
    start = time.perf_counter()
    table = load_vectors(args.rspecifier)
    log.debug("read %d embeddings from %s in %.2f s", len(table), args.rspecifier, time.perf_counter() - start)

    missing, mask = missing_utterances(table, trials)
    missing_file = f"{args.scores}.missing"
    if missing and not args.allow_missing:
        raise AvtkError(missing_message(trials, missing, mask, args.trials, args.rspecifier)
                        + " (--allow-missing skips such trials)")
    skipped = None  # the lines of SCORES.missing, written with the scores (one atomic group)
    if missing:
        if mask.all():
            raise AvtkError(missing_message(trials, missing, mask, args.trials, args.rspecifier)
                            + ": no trial is left to score")
        skipped = [f"{trials.enroll[i]} {trials.test[i]}\n" for i in mask.nonzero()[0]]
        log.warning("skipped %d of %d trials: %d utterances have no embedding in %s (e.g. %s); listed in %s",
                    int(mask.sum()), len(trials), len(missing), args.rspecifier, missing[0], missing_file)
        trials = subset_trials(trials, ~mask)

    mean = None
    if args.subtract_mean:
        mean = table_mean(table, args.rspecifier)
    elif args.mean_from:
        mean = table_mean(load_vectors(args.mean_from), args.mean_from)
    cohort = None
    if args.cohort:
        utt2spk = read_utt2spk(args.cohort_utt2spk) if args.cohort_utt2spk else None
        names, cohort = make_cohort(load_vectors(args.cohort), mean, utt2spk, args.cohort, args.cohort_utt2spk)
        log.info("AS-Norm cohort: %d %s from %s, top %d", len(names), "speakers" if utt2spk else "embeddings",
                 args.cohort, min(args.top_n, len(names)))
    start = time.perf_counter()
    scores = score_trials(table, trials, mean, cohort, args.top_n, where=args.trials, source=args.rspecifier,
                          cohort_source=args.cohort, cohort_means=bool(args.write_quality))
    if args.write_quality:
        scores, utts, means = scores
    log.debug("scored in %.2f s", time.perf_counter() - start)

    names = {1: " target", 0: " nontarget"}
    labels = [""] * len(trials) if trials.labels is None else [names[int(x)] for x in trials.labels]
    from avtk.io.ark import input_files

    # with --allow-missing, SCORES.missing is an output too: it must be no input, nor --write-quality
    with atomic_group(args.scores, args.write_quality, missing_file if args.allow_missing else None,
                      inputs=input_files(args.rspecifier, args.trials, args.cohort, args.mean_from)):
        if skipped is not None:
            with atomic_open(missing_file) as f:
                f.writelines(skipped)
        elif args.allow_missing and os.path.isfile(missing_file) and not (
                args.write_quality and os.path.realpath(args.write_quality) == os.path.realpath(missing_file)):
            os.remove(missing_file)  # a list from an earlier run would describe other scores
        with atomic_open(args.scores) as f:
            f.writelines(f"{e} {t} {s:.6f}{lab}\n"
                         for e, t, s, lab in zip(trials.enroll, trials.test, scores.tolist(), labels))
        if args.write_quality:
            write_cohort_means(args.write_quality, utts, means)
    log.info("scored %d trials into %s%s", len(scores), args.scores,
             f", cohort means of {len(utts)} utterances into {args.write_quality}" if args.write_quality else "")
