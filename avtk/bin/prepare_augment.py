"""Make the augmentation data dirs from MUSAN and RIRS_NOISES as downloaded (openslr.org 17 and 28).

`avtk prepare-augment --musan /corpora/musan --rirs /corpora/RIRS_NOISES data` writes data/musan_noise,
data/musan_music, data/musan_speech (babble talkers) and data/rirs (simulated room impulse responses): the
directories the VoxCeleb configs' `augment:` section names. Each has wav.scp, utt2spk (every file its own
speaker), spk2utt and utt2dur, and is validated. Every file must be a readable 16 kHz mono wav; anything
else is an error naming the file. See avtk.data.augment_corpora for the layouts and the keys.
"""
import logging

from avtk.command import make_parser
from avtk.data.augment_corpora import RIR_ROOMS, prepare_musan, prepare_rirs
from avtk.errors import AvtkError

log = logging.getLogger(__name__)


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--musan", metavar="DIR", help="the musan directory (music/, noise/, speech/)")
    p.add_argument("--rirs", metavar="DIR", help="the RIRS_NOISES directory (simulated_rirs/)")
    p.add_argument("--rir-rooms", default=",".join(RIR_ROOMS),
                   help="simulated room sizes to use, comma-separated (Kaldi's VoxCeleb v2 uses smallroom,mediumroom)")
    p.add_argument("data_dir", help="where to write musan_noise, musan_music, musan_speech and rirs")
    return p


def main(args):
    if not args.musan and not args.rirs:
        raise AvtkError("give --musan DIR, --rirs DIR or both")
    counts = {}
    if args.musan:
        counts.update(prepare_musan(args.musan, args.data_dir))
    if args.rirs:
        rooms = tuple(r.strip() for r in args.rir_rooms.split(",") if r.strip())
        counts.update(prepare_rirs(args.rirs, args.data_dir, rooms))
    log.info("wrote %s", ", ".join(f"{args.data_dir}/{name} ({n} files)" for name, n in counts.items()))
    return 0
