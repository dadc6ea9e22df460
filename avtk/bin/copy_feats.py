"""Copy a table of matrices or vectors from an rspecifier to a wspecifier, like Kaldi's copy-feats.

Examples:
    avtk copy-feats ark:feats.ark ark,scp:out/feats.ark,out/feats.scp   # index an ark
    avtk copy-feats scp:data/train/feats.scp ark,t:-                      # print as text
    avtk copy-feats "ark:gunzip -c feats.ark.gz |" ark:feats.ark

File outputs are atomic: nothing appears under the output names unless the whole table was copied.
"""
import logging

from avtk.command import make_parser
from avtk.io.ark import open_reader, open_writer

log = logging.getLogger(__name__)


def get_parser():
    parser = make_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("rspecifier", help="input table, e.g. ark:in.ark, scp:in.scp, 'ark:cmd |', ark:-")
    parser.add_argument("wspecifier", help="output table, e.g. ark,scp:out.ark,out.scp, ark,t:out.txt, ark:-")
    return parser


def main(args):
    count = 0
    with open_writer(args.wspecifier) as writer:
        for key, array in open_reader(args.rspecifier):
            writer[key] = array
            count += 1
    if count == 0:
        log.warning("copied no entries: %s is empty", args.rspecifier)
    else:
        log.info("copied %d entries from %s to %s", count, args.rspecifier, args.wspecifier)
    return 0
