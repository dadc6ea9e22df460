"""Make a Kaldi data directory consistent in place (originals kept in <dir>/.backup/).

Keeps only the utterances present in utt2spk and in every per-utterance file (wav.scp or
segments, utt2dur, utt2num_frames, feats.scp, vad.scp, frames.scp, text), drops speakers without
utterances, sorts every file (LC_ALL=C) and regenerates spk2utt; logs how much was removed.
Malformed lines and duplicate keys are errors to fix by hand (run validate-data-dir).
"""
from avtk.command import make_parser
from avtk.data.datadir import fix


def get_parser():
    parser = make_parser(__doc__)
    parser.add_argument("data_dir", help="the data directory, fixed in place")
    return parser


def main(args):
    fix(args.data_dir)
    return 0
