"""Write trivial baseline embeddings (mean MFCC, or mean downscaled face pixels) to an ark/scp table."""
import logging

from avtk.command import make_parser
from avtk.data.table import read_dict
from avtk.io.ark import open_writer
from avtk.io.audio import AudioReader


def get_parser():
    p = make_parser(
        "Extract trivial baseline embeddings for a data dir: `audio` is the mean MFCC (c1-c19 of a 40-band "
        "log-mel) of each utterance (from wav.scp), `face` the mean over its frames of the 16x16 downscaled RGB image (from "
        "frames.scp). Score them with `avtk score` to see what a network has to beat."
    )
    p.add_argument("data_dir", help="Kaldi data dir")
    p.add_argument("wspecifier", help="output table, e.g. ark,scp:exp/base/emb.ark,exp/base/emb.scp")
    p.add_argument("--modality", choices=["audio", "face"], default="audio", help="which baseline to extract")
    p.add_argument("--resample", action="store_true", help="resample audio that is not 16 kHz instead of failing")
    return p


def main(args):
    import torch

    from avtk.baselines import mean_mfcc, mean_pixels

    torch.set_num_threads(1)
    log = logging.getLogger(__name__)
    n, skipped = 0, []
    with open_writer(args.wspecifier) as writer:
        if args.modality == "audio":
            for utt, wave in AudioReader(args.data_dir, resample=args.resample):
                writer[utt] = mean_mfcc(wave, utt=f"{args.data_dir}: utterance {utt!r}")
                n += 1
        else:
            for utt, frames_dir in read_dict(f"{args.data_dir}/frames.scp").items():
                vec = mean_pixels(utt, frames_dir)
                if vec is None:
                    skipped.append(utt)
                    continue
                writer[utt] = vec
                n += 1
    if skipped:
        log.warning("%d utterances have no face frames and got no embedding, e.g. %s", len(skipped), skipped[0])
    log.info("wrote %d %s baseline embeddings to %s", n, args.modality, args.wspecifier)
