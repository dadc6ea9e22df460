"""Identify speakers: each test utterance's top-k enrolled speakers, scores, and an open-set decision."""
import logging
from collections import Counter

from avtk.command import count, make_parser, number
from avtk.errors import AvtkError
from avtk.identify import UNKNOWN, Gallery
from avtk.io.ark import load_vectors
from avtk.scoring import DEFAULT_TOP_N, make_cohort, read_utt2spk

log = logging.getLogger(__name__)


def get_parser():
    p = make_parser(
        "Identify the speaker of every utterance of TEST (embeddings from extract-embeddings) among the speakers "
        "of GALLERY (from `avtk enroll`; its mean, if any, is subtracted from the test embeddings): the cosine "
        "against every speaker model, AS-Norm normalised with --cohort. With --face-gallery and --face-test, "
        "each speaker's audio and face scores are fused: their mean (the seed's fusion), or the fused LLR of a "
        "--calibration; a missing face (utterance or speaker) leaves the audio score. With --calibration (avtk "
        "fuse --method logreg --model-out, trained on scores made the same way) the scores are natural-log "
        "LLRs. Writes one line per test utterance, `utt decision spk_1 score_1 ... spk_k score_k`, best first; "
        "the decision is the top-1 speaker, or <unknown> when its score is below --threshold (with a "
        "calibration and no --threshold: below the Bayes threshold ln((1 - prior) / prior))."
    )
    p.add_argument("gallery", help="speaker models from avtk enroll, e.g. scp:exp/gallery/audio.scp")
    p.add_argument("test", help="test utterance embeddings, e.g. scp:exp/id/test_audio.scp")
    p.add_argument("out", help="output file")
    p.add_argument("--top-k", type=count(1), default=5, help="speakers listed per utterance")
    p.add_argument("--cohort", metavar="RSPECIFIER",
                   help="AS-Norm cohort embeddings (e.g. the training embeddings); the gallery's mean is "
                        "subtracted from them too")
    p.add_argument("--cohort-utt2spk", metavar="FILE",
                   help="utt2spk of the --cohort utterances: one cohort member per speaker")
    p.add_argument("--top-n", type=count(2), default=DEFAULT_TOP_N,
                   help="AS-Norm: the highest cohort scores of each side that give its mean and std")
    p.add_argument("--face-gallery", metavar="RSPECIFIER", help="face models of the same speakers (avtk enroll)")
    p.add_argument("--face-test", metavar="RSPECIFIER",
                   help="face embeddings of the test utterances (utterances without a face may be missing)")
    p.add_argument("--face-cohort", metavar="RSPECIFIER", help="AS-Norm cohort of face embeddings")
    p.add_argument("--face-cohort-utt2spk", metavar="FILE", help="utt2spk of the --face-cohort utterances")
    p.add_argument("--calibration", metavar="MODEL",
                   help="logreg calibration/fusion model (avtk fuse --method logreg --model-out): scores become "
                        "LLRs and the open-set threshold defaults to the Bayes threshold at --prior")
    p.add_argument("--modalities",
                   help="the calibration's modality names for the audio (and face) scores, e.g. audio,face "
                        "(default: its modalities in order)")
    p.add_argument("--prior", type=number(0, 1, low_open=True, high_open=True),
                   help="with --calibration: the target prior of the Bayes threshold (default 0.5: LLR 0)")
    p.add_argument("--threshold", type=number(),
                   help="open-set threshold on the output scores (LLRs with --calibration): a top-1 score below "
                        "it is decided <unknown>; e.g. a threshold from compute-id-metrics at a chosen FAR")
    return p


def _cohort(rspecifier, utt2spk_path, gallery, top_n, what):
    if utt2spk_path and not rspecifier:
        raise AvtkError(f"--{what}cohort-utt2spk needs --{what}cohort")
    if not rspecifier:
        return None
    utt2spk = read_utt2spk(utt2spk_path) if utt2spk_path else None
    names, cohort = make_cohort(load_vectors(rspecifier), gallery.mean, utt2spk, rspecifier, utt2spk_path)
    log.info("AS-Norm %scohort: %d %s from %s, top %d", what, len(names), "speakers" if utt2spk else "embeddings",
             rspecifier, min(top_n, len(names)))
    return cohort


def main(args):
    if (args.face_gallery is None) != (args.face_test is None):
        raise AvtkError("give both --face-gallery and --face-test, or neither")
    if args.face_cohort and not args.face_gallery:
        raise AvtkError("--face-cohort needs --face-gallery and --face-test")
    if args.modalities and not args.calibration:
        raise AvtkError("--modalities names the modalities of a --calibration: give one")
    gallery = Gallery.load(args.gallery)
    test = load_vectors(args.test)
    cohort = _cohort(args.cohort, args.cohort_utt2spk, gallery, args.top_n, "")
    face_gallery = face = face_cohort = None
    if args.face_gallery:
        face_gallery = Gallery.load(args.face_gallery)
        face = load_vectors(args.face_test)
        face_cohort = _cohort(args.face_cohort, args.face_cohort_utt2spk, face_gallery, args.top_n, "face-")
    enrolled = {utt: spk for spk, utts in (gallery.spk2utt or {}).items() for utt in utts}
    tested = [utt for utt in test if utt in enrolled]
    if tested:
        log.warning("%d test utterances are enrollment utterances of the gallery (e.g. %r of speaker %r): their "
                    "identification is no test", len(tested), tested[0], enrolled[tested[0]])
    modalities = [m.strip() for m in args.modalities.split(",")] if args.modalities else None
    result = gallery.identify(test, args.top_k, cohort=cohort, top_n=args.top_n, face_gallery=face_gallery,
                              face=face, face_cohort=face_cohort, calibration=args.calibration,
                              modalities=modalities, threshold=args.threshold, prior=args.prior,
                              source=args.test, face_source=args.face_test)
    result.write(args.out)
    unknown = Counter(result.decisions)[UNKNOWN]
    log.info("identified %d utterances among %d speakers into %s%s", len(result.utts), len(gallery), args.out,
             f" ({unknown} decided {UNKNOWN} at threshold {result.threshold:.4f})"
             if result.threshold is not None else " (closed set: no threshold)")
