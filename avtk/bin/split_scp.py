"""Split a scp/table into parts: `avtk split-scp [--utt2spk FILE] in.scp out1 out2 ...`.

The number of output files is the number of parts (Kaldi's split_scp.pl form). Without
--utt2spk, the lines are cut into consecutive runs whose sizes differ by at most one. With
--utt2spk, each speaker's lines all go to one part, parts balanced by line count (largest
speakers placed first). The parts are written atomically as a group: all appear, or none. Every part keeps the input's line order, so sorted input gives sorted
parts. More parts than lines (or speakers), or a key on two lines, is an error. For a data
directory split N ways, e.g.:
`avtk split-scp data/train/wav.scp data/train/split4/{1,2,3,4}/wav.scp`.
"""
import logging

from avtk.command import make_parser
from avtk.data.datadir import split_scp
from avtk.io.atomic import atomic_group

log = logging.getLogger(__name__)


def get_parser():
    parser = make_parser(__doc__)
    parser.add_argument("--utt2spk", metavar="FILE", help="keep each speaker's utterances in one part")
    parser.add_argument("scp", help="input table (first field of each line is its key)")
    parser.add_argument("outputs", nargs="+", metavar="out", help="output files, one per part")
    return parser


def main(args):
    with atomic_group(*args.outputs):  # every part, or none
        counts = split_scp(args.scp, args.outputs, utt2spk=args.utt2spk)
    log.debug("%s: lines per part: %s", args.scp, " ".join(map(str, counts)))
    return 0
