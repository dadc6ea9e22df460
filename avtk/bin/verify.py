"""Verify two recordings (and optionally two faces): scores, calibrated LLRs and a same/different decision."""
from avtk.command import count, device, make_parser, number
from avtk.errors import AvtkError


def get_parser():
    p = make_parser(
        "Compare two recordings with a speaker model: prints `key: value` lines on stdout, speaker_score (cosine "
        "of the whole-recording embeddings), face_score with --face-model (dot product of the mean "
        "L2-normalised embeddings of 5 evenly spaced aligned frames: the mean 5x5 frame cosine), llr / face_llr "
        "/ fused_llr with --calibration, and decision: same|different. Audio: wav/flac/... or m4a/mp4 (PyAV), "
        "the first channel of a multi-channel file (--channel), resampled to 16 kHz. The decision is the fused LLR > ln((1-prior)/prior) "
        "when a calibration covers both modalities, else speaker_score >= the threshold stored in the speaker "
        "model, else the speaker LLR > ln((1-prior)/prior); with none of them only the scores are printed. "
        "Store a threshold with `avtk verify --model M --set-threshold T` (or --set-threshold-eer DEV_SCORES); "
        "thresholds and calibrations must come from dev trials scored the same way (avtk score without "
        "--mean-from or --cohort)."
    )
    p.add_argument("--model", required=True,
                   help="speaker model file (EXP/avg_model.pt, or a seed A-Vox2 checkpoint, imported on the fly: "
                        "avtk.load_model); with --set-threshold*, any avtk model file")
    p.add_argument("--face-model", help="face model file, to score --face-a against --face-b")
    p.add_argument("--face-a", help="faces of the first recording: a video (frames every 0.4 s, MTCNN + alignment) "
                                    "or a directory of aligned 112x112 frames")
    p.add_argument("--face-b", help="faces of the second recording (as --face-a)")
    p.add_argument("--calibration",
                   help="logreg calibration/fusion model from `avtk fuse --method logreg --model-out` (trained on "
                        "plain cosine scores)")
    p.add_argument("--modalities",
                   help="--calibration's modality names for the speaker and the face score, e.g. audio,face "
                        "(default: the model's modalities in order)")
    p.add_argument("--prior", type=number(0, 1, low_open=True, high_open=True), default=0.5,
                   help="target prior of LLR decisions: same if LLR > ln((1 - prior) / prior)")
    p.add_argument("--channel", default="0",
                   help="multi-channel audio: a channel index (0 = the first, as every avtk command reads audio) "
                        "or mean (average the channels)")
    p.add_argument("--face-frames", type=count(1), default=5, help="evenly spaced frames embedded per face input")
    p.add_argument("--interval", type=number(0, low_open=True), default=0.4,
                   help="seconds between the frames taken from a video")
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:N or auto")
    store = p.add_mutually_exclusive_group()
    store.add_argument("--set-threshold", type=number(), metavar="T",
                       help="store decision threshold T in --model (atomically) and exit; takes no recordings")
    store.add_argument("--set-threshold-eer", metavar="DEV_SCORES",
                       help="store the EER threshold of a labelled scores file (`enroll test score "
                            "target|nontarget`, from avtk score) in --model and exit")
    p.add_argument("--threshold-source", help="with --set-threshold: where the threshold comes from, kept with it "
                                              "(default: 'set by hand')")
    p.add_argument("recordings", nargs="*", help="the two audio (or video) files to compare: A B")
    return p


def _channel(text):
    if text == "mean":
        return "mean"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise AvtkError(f"--channel {text!r}: give mean or a channel index (0, 1, ...)")
    return value


def _store(args):
    from avtk.verify import eer_threshold, set_threshold

    if args.recordings or args.face_a or args.face_b or args.face_model or args.calibration:
        raise AvtkError("--set-threshold/--set-threshold-eer store a threshold in --model and compare nothing: "
                        "give no recordings, faces or calibration")
    if args.set_threshold_eer:
        if args.threshold_source:
            raise AvtkError("--threshold-source applies to --set-threshold (the EER threshold names its scores file)")
        value, source = eer_threshold(args.set_threshold_eer)
    else:
        value, source = args.set_threshold, args.threshold_source or "set by hand"
    section = set_threshold(args.model, value, source)
    print(f"threshold: {section['threshold']:.4f}")
    print(f"threshold_source: {section['source']}")
    return 0


def main(args):
    if args.set_threshold is not None or args.set_threshold_eer:
        return _store(args)
    if args.threshold_source:
        raise AvtkError("--threshold-source goes with --set-threshold")
    if len(args.recordings) != 2:
        raise AvtkError(f"give two recordings to compare (got {len(args.recordings)}): avtk verify --model M A B")
    if args.face_frames < 1 or args.interval <= 0:
        raise AvtkError("--face-frames must be at least 1 and --interval positive")
    from avtk.verify import verify_pair

    lines = verify_pair(args.model, *args.recordings, face_model=args.face_model, face_a=args.face_a,
                        face_b=args.face_b, calibration=args.calibration, modalities=args.modalities,
                        prior=args.prior, channel=_channel(args.channel), face_frames=args.face_frames,
                        interval=args.interval, device=args.device)
    for key, value in lines:
        print(f"{key}: {value}")
    return 0
