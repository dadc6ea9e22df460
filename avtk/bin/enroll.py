"""Enrol speakers for identification: one model per speaker from its enrollment utterances' embeddings."""
import logging

from avtk.command import make_parser
from avtk.errors import AvtkError
from avtk.identify import Gallery, read_enrollment
from avtk.io.ark import load_vectors
from avtk.scoring import table_mean

log = logging.getLogger(__name__)


def get_parser():
    p = make_parser(
        "Enrol speakers into an identification gallery: each speaker's model is the mean of the L2-normalised "
        "embeddings (speaker or face, from extract-embeddings) of its enrollment utterances, any number from any "
        "number of sessions, each with a mean vector subtracted first if asked (--subtract-mean, --mean-from). "
        "Writes the models keyed by speaker to WSPECIFIER (e.g. ark,scp:exp/gallery/audio.ark,"
        "exp/gallery/audio.scp) and beside it, named after the scp, G.spk2utt (the utterances enrolled) and, "
        "with a mean, G.mean (an ark holding it, which `avtk identify` subtracts from the test embeddings). "
        "An enrollment utterance without an embedding (unless --allow-missing), a speaker without utterances, "
        "an utterance listed twice and a NaN, infinite or all-zero embedding are errors naming the file and "
        "line or utterance."
    )
    lists = p.add_mutually_exclusive_group(required=True)
    lists.add_argument("--spk2utt", help="the enrollment utterances of each speaker: `spk utt1 utt2 ...` lines")
    lists.add_argument("--utt2spk", help="the enrollment utterances as `utt spk` lines")
    p.add_argument("--subtract-mean", action="store_true",
                   help="subtract the mean of every embedding of RSPECIFIER before normalising")
    p.add_argument("--mean-from", metavar="RSPECIFIER",
                   help="subtract the mean of this table's embeddings instead (e.g. the training embeddings)")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave out (with a warning) enrollment utterances without an embedding, e.g. faces of "
                        "utterances without a face, and speakers left with none")
    p.add_argument("rspecifier", help="utterance embeddings, e.g. scp:exp/ecapa/emb/test.scp")
    p.add_argument("wspecifier", help="speaker models, e.g. ark,scp:exp/gallery/audio.ark,exp/gallery/audio.scp")
    return p


def main(args):
    if args.subtract_mean and args.mean_from:
        raise AvtkError("--subtract-mean and --mean-from are alternatives: give one")
    enrollment = read_enrollment(spk2utt=args.spk2utt, utt2spk=args.utt2spk)
    table = load_vectors(args.rspecifier)
    mean = None
    if args.subtract_mean:
        mean = table_mean(table, args.rspecifier)
    elif args.mean_from:
        mean = table_mean(load_vectors(args.mean_from), args.mean_from)
    gallery = Gallery.enroll_table(table, enrollment, mean, args.rspecifier, args.spk2utt or args.utt2spk,
                                   args.allow_missing)
    gallery.save(args.wspecifier)
    n = sum(len(u) for u in gallery.spk2utt.values())
    log.info("enrolled %d speakers from %d utterances into %s", len(gallery), n, args.wspecifier)
