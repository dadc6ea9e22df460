"""Generate the synthetic audio-visual corpus (voices, faces, sessions) and its Kaldi data dirs."""
import logging
import time

from avtk.command import count, make_parser, number
from avtk.errors import AvtkError
from avtk.synth.corpus import Config, make_corpus


def get_parser():
    p = make_parser(
        "Generate a synthetic audio-visual speaker corpus: per-speaker source-filter voices and parametric "
        "faces, with session variability per video. Writes the VoxCeleb-style tree under OUT_DIR "
        "(wav/<spk>/<video>/<utt>.wav, frame_align/<spk>/<video>/<utt>/NNNN.jpg aligned 112x112, "
        "frame_raw/... raw frames with landmarks.txt), the seed's lists (train_all.txt, O_list.txt, "
        "O_trials.txt) and Kaldi data dirs DATA_DIR/train and DATA_DIR/test (wav.scp, utt2spk, spk2utt, "
        "utt2dur, frames.scp; test/trials) with disjoint speakers."
    )
    d = Config()
    p.add_argument("out_dir", help="corpus tree to write")
    p.add_argument("data_dir", help="where to write the Kaldi data dirs train/ and test/")
    p.add_argument("--num-train-speakers", type=count(1), default=d.num_train_speakers, help="speakers in data/train")
    p.add_argument("--num-test-speakers", type=count(2), default=d.num_test_speakers,
                   help="speakers in data/test, disjoint from training")
    p.add_argument("--num-dev-speakers", type=count(0), default=d.num_dev_speakers,
                   help="speakers of an optional DATA_DIR/dev (with trials), disjoint from both, for calibration")
    p.add_argument("--videos-per-speaker", type=count(1), default=d.videos_per_speaker,
                   help="sessions per speaker; each has its own channel, noise, lighting and pose")
    p.add_argument("--utts-per-video", type=count(1), default=d.utts_per_video, help="utterances per session")
    p.add_argument("--min-duration", type=number(0, low_open=True), default=d.min_duration,
                   help="shortest utterance (s)")
    p.add_argument("--max-duration", type=number(0, low_open=True), default=d.max_duration,
                   help="longest utterance (s)")
    p.add_argument("--frame-interval", type=number(0, low_open=True), default=d.frame_interval,
                   help="one face frame every this many s")
    p.add_argument("--label-noise", type=number(0, 1, high_open=True), default=d.label_noise,
                   help="fraction of training utterances filed under a wrong speaker; the truth goes to "
                        "DATA_DIR/train/label_noise.txt (utt labelled_spk true_spk)")
    p.add_argument("--no-raw-frames", dest="raw_frames", action="store_false",
                   help="do not write frame_raw/ (raw frames and landmarks, used by alignment)")
    p.add_argument("--seed", type=count(0), default=d.seed, help="the same seed gives identical output")
    p.add_argument("--nj", type=count(1), default=2, help="parallel worker processes")
    return p


def main(args):
    if not 0.0 <= args.label_noise < 1.0:
        raise AvtkError(f"--label-noise must be in [0, 1), got {args.label_noise}")
    if args.num_train_speakers < 1 or args.num_test_speakers < 2 or args.num_dev_speakers in (1,):
        raise AvtkError("need at least 1 training, 2 test and 0 or at least 2 dev speakers (for non-target trials)")
    if not 0 < args.min_duration <= args.max_duration:
        raise AvtkError(f"need 0 < --min-duration <= --max-duration, got {args.min_duration}, {args.max_duration}")
    cfg = Config(
        num_train_speakers=args.num_train_speakers, num_test_speakers=args.num_test_speakers,
        num_dev_speakers=args.num_dev_speakers,
        videos_per_speaker=args.videos_per_speaker, utts_per_video=args.utts_per_video,
        min_duration=args.min_duration, max_duration=args.max_duration, frame_interval=args.frame_interval,
        label_noise=args.label_noise, raw_frames=args.raw_frames, seed=args.seed,
    )
    start = time.time()
    make_corpus(cfg, args.out_dir, args.data_dir, nj=args.nj)
    logging.getLogger(__name__).info("done in %.1f s", time.time() - start)
