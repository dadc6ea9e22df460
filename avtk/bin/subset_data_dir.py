"""Copy part of a Kaldi data directory: listed utterances or speakers, the first N, or N at random.

Exactly one of --utt-list, --spk-list, --first, --random chooses the utterances (a list file's
first field on each line is the id). Every file of SRC is copied into DST restricted to them
(wav.scp to their recordings when there are segments, spk2gender to their speakers); spk2utt is
regenerated; all files are written sorted.
"""
from avtk.command import count, make_parser
from avtk.data.datadir import subset
from avtk.data.table import numbered_fields


def get_parser():
    parser = make_parser(__doc__)
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--utt-list", metavar="FILE", help="keep the utterances listed in FILE")
    choice.add_argument("--spk-list", metavar="FILE", help="keep every utterance of the speakers listed in FILE")
    choice.add_argument("--first", type=count(1), metavar="N", help="keep the first N utterances (sorted order)")
    choice.add_argument("--random", type=count(1), metavar="N", help="keep N utterances drawn at random (see --seed)")
    parser.add_argument("--seed", type=count(0), default=0, help="random seed for --random")
    parser.add_argument("src", help="source data directory")
    parser.add_argument("dst", help="destination data directory (created; its data files replaced)")
    return parser


def _ids(path):
    return [fields[0] for _, fields, _ in numbered_fields(path, "list ")]


def main(args):
    subset(
        args.src, args.dst,
        utt_list=_ids(args.utt_list) if args.utt_list else None,
        spk_list=_ids(args.spk_list) if args.spk_list else None,
        first=args.first, random=args.random, seed=args.seed,
    )
    return 0
