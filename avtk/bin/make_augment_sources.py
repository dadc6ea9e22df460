"""Generate small synthetic stand-ins for MUSAN (noise, music, babble speech) and RIRs, with their data dirs."""
import logging
import time

from avtk.synth.augment_sources import make_augment_sources
from avtk.command import count, make_parser
from avtk.errors import AvtkError


def get_parser():
    p = make_parser(
        "Generate small synthetic stand-ins for the augmentation corpora, 16 kHz: noises (coloured stationary "
        "noise, mains hum, clicks, wind-like gusts; 3-8 s), tonal music (chords and melody of harmonic notes "
        "with envelopes, optional percussion; 5-10 s), babble talkers (synthetic voices that are not corpus "
        "speakers; 3-8 s) and simulated room impulse responses (direct path, early reflections, exponentially "
        "decaying diffuse tail, RT60 0.2-0.9 s; 0.3-1.0 s). Writes OUT_DIR/{noise,music,speech,rirs}/*.wav "
        "and the Kaldi data dirs DATA_DIR/musan_noise, DATA_DIR/musan_music, DATA_DIR/musan_speech and "
        "DATA_DIR/rirs (wav.scp, utt2spk with each file its own speaker, spk2utt, utt2dur)."
    )
    p.add_argument("out_dir", help="where to write the wav files")
    p.add_argument("data_dir", help="where to write the data dirs musan_noise, musan_music, musan_speech, rirs")
    p.add_argument("--seed", type=count(0), default=0, help="the same seed gives identical files")
    p.add_argument("--num-noise", type=count(1), default=20, help="noise files")
    p.add_argument("--num-music", type=count(1), default=10, help="music files")
    p.add_argument("--num-speech", type=count(1), default=20, help="babble speech files (one talker each)")
    p.add_argument("--num-rirs", type=count(1), default=30, help="room impulse responses")
    return p


def main(args):
    for opt in ("num_noise", "num_music", "num_speech", "num_rirs"):
        if getattr(args, opt) < 1:
            raise AvtkError(f"--{opt.replace('_', '-')} must be at least 1, got {getattr(args, opt)}")
    start = time.time()
    counts = make_augment_sources(args.out_dir, args.data_dir, seed=args.seed, num_noise=args.num_noise,
                                  num_music=args.num_music, num_speech=args.num_speech, num_rirs=args.num_rirs)
    logging.getLogger(__name__).info("wrote %s in %.1f s",
                                     ", ".join(f"{n} {name}" for name, n in counts.items()), time.time() - start)
