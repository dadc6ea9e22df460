"""Draw a labelled calibration trial list (short enrollment against long test) from a data directory."""
import logging

from avtk.command import count, make_parser, number
from avtk.data import datadir
from avtk.data.table import read_dict
from avtk.data.trials import CALIBRATION_KINDS, draw_calibration_trials, write_trials
from avtk.errors import AvtkError
from avtk.quality import durations

log = logging.getLogger(__name__)


def get_parser():
    p = make_parser(
        "Draw trials to train a calibration on (avtk fuse --method logreg, with quality measures: QMF) from a data "
        "directory's utterances, by their durations (utt2dur, else utt2num_frames at 100 per second): a short "
        "enrollment against a long test, as WeSpeaker calibrates (2-6 s against over 6 s). Target and non-target "
        "trials are balanced, non-targets pair different speakers, no trial repeats, and the same --seed gives the "
        "same list. Writes Kaldi-style trials `enroll test target|nontarget`. Draw them from speakers the networks "
        "were not trained on when there are any (a dev set): trained-on speakers give over-confident scores."
    )
    p.add_argument("--num-trials", type=count(2), default=10000,
                   help="number of trials, shared evenly by the --kinds and by target and non-target")
    p.add_argument("--seed", type=count(0), default=0, help="random seed")
    p.add_argument("--short-min", type=number(0), default=2.0, help="shortest short utterance, seconds")
    p.add_argument("--short-max", type=number(0, low_open=True), default=6.0,
                   help="short utterances are shorter than this, seconds")
    p.add_argument("--long-min", type=number(0), default=6.0, help="shortest long utterance, seconds")
    p.add_argument("--kinds", default="short-long",
                   help="comma-separated enrollment-test duration classes to draw, among "
                        f"{', '.join(CALIBRATION_KINDS)}")
    p.add_argument("--utt2session", metavar="FILE",
                   help="`<utt> <session>` table (e.g. the video of each utterance): target trials pair utterances "
                        "of different sessions. For VoxCeleb-style ids spk-video-nnnnn: "
                        "awk '{split($1, f, \"-\"); print $1, f[1] \"-\" f[2]}' data/x/utt2spk")
    p.add_argument("data_dir", help="data directory (utt2spk, and utt2dur or utt2num_frames)")
    p.add_argument("trials", help="output trials file")
    return p


def main(args):
    if args.short_min >= args.short_max:
        raise AvtkError(f"--short-min {args.short_min:g} must be below --short-max {args.short_max:g}")
    kinds = tuple(k.strip() for k in args.kinds.split(","))
    dd = datadir.load(args.data_dir)
    utt2dur, source = durations(dd)
    utt2spk = dd.utt2spk
    lacking = [u for u in sorted(utt2spk) if u not in utt2dur]
    if lacking:
        raise AvtkError(f"{source}: no duration for utterance {lacking[0]!r} of {dd.file('utt2spk')} "
                        f"({len(lacking)} of {len(utt2spk)} utterances lack one)")
    session = None
    if args.utt2session:
        session = read_dict(args.utt2session)
        lacking = [u for u in sorted(utt2spk) if u not in session]
        if lacking:
            raise AvtkError(f"{args.utt2session}: no session for utterance {lacking[0]!r} of {dd.file('utt2spk')} "
                            f"({len(lacking)} of {len(utt2spk)} utterances lack one)")
    trials = draw_calibration_trials(utt2spk, utt2dur, args.num_trials, args.seed, (args.short_min, args.short_max),
                                     args.long_min, kinds, args.data_dir, session)
    write_trials(args.trials, trials, "kaldi")
    n_tar = int(trials.labels.sum())
    log.info("drew %d trials (%d target, %d non-target; %s) from %d speakers of %s into %s", len(trials), n_tar,
             len(trials) - n_tar, ",".join(kinds), len(set(utt2spk.values())), args.data_dir, args.trials)
    return 0
