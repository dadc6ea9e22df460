"""Combine Kaldi data directories into one (an utterance id in two sources is an error).

Files every source has are merged (wav.scp and utt2spk always; segments, utt2dur, feats.scp,
frames.scp, ... when all have them); spk2utt is regenerated; everything is written sorted. A
speaker may appear in several sources. Files only some sources have are left out, with a warning.
"""
from avtk.command import make_parser
from avtk.data.datadir import combine


def get_parser():
    parser = make_parser(__doc__)
    parser.add_argument("dst", help="destination data directory")
    parser.add_argument("srcs", nargs="+", metavar="src", help="source data directories")
    return parser


def main(args):
    combine(args.dst, args.srcs)
    return 0
