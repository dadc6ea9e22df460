"""Check a Kaldi data directory; print every problem (file:line) and exit 1 if there are any.

Checks that wav.scp, utt2spk and spk2utt exist (and feats.scp, unless --no-feats); that every
file is sorted by key (LC_ALL=C), has no duplicate keys and no malformed lines; that utt2spk and
wav.scp (or segments) list the same utterances; that segments name recordings in wav.scp and have
end > start; that spk2utt matches utt2spk with no speaker left without utterances; that optional
per-utterance files (utt2dur, utt2num_frames, feats.scp, vad.scp, frames.scp, text) only name
utterances of utt2spk; and that a trials file names known utterances or speakers. With
--check-audio, every wav.scp entry that is a plain path must exist and have a readable header that
does not declare more audio than the file holds, and (without segments) its duration must be within
0.02 s of utt2dur (`command |` entries are not run).
"""
import logging
import sys

from avtk.command import count, make_parser
from avtk.data.datadir import validate

log = logging.getLogger(__name__)


def get_parser():
    parser = make_parser(__doc__)
    parser.add_argument("--no-feats", action="store_true", help="do not require feats.scp")
    parser.add_argument("--check-audio", action="store_true",
                        help="read the header of each plain-path audio file in wav.scp: missing, unreadable or truncated "
                             "files, and durations more than 0.02 s from utt2dur, are problems")
    parser.add_argument("--max-per-check", type=count(0), default=10,
                        help="problems listed per file and check before the rest are only counted (0: all)")
    parser.add_argument("data_dir", help="the data directory")
    return parser


def main(args):
    problems = validate(
        args.data_dir, check_audio=args.check_audio, require_feats=not args.no_feats,
        max_per_check=args.max_per_check or None,
    )
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        shown = ", listed or counted above" if problems.total != len(problems) else "; see above"
        log.error("%s: %d problem(s)%s", args.data_dir, problems.total, shown)
        return 1
    log.info("%s: OK", args.data_dir)
    return 0
