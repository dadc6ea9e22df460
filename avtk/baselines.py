"""Trivial embeddings that trained networks must beat: mean MFCC for speech, raw pixels for faces."""
import numpy as np
from PIL import Image

from avtk.errors import AvtkError
from avtk.face.frames import frame_paths, read_frame
from avtk.features.mel import log_mel


MIN_SAMPLES = 400  # one 25 ms analysis window of log_mel at 16 kHz


def mean_mfcc(wave, n_ceps=20, utt="utterance"):
    """The utterance's mean MFCC c1..c19 (DCT-II of the 40-band log-mel), float32 (n_ceps - 1,); c0, the
    level, is left out. wave: 1-D float samples at 16 kHz. Fewer than MIN_SAMPLES samples (one 25 ms window)
    is an AvtkError naming `utt`: there is no spectrum to average."""
    if len(wave) < MIN_SAMPLES:
        raise AvtkError(f"{utt}: {len(wave)} samples ({len(wave) / 16000:.3f} s) is shorter than one 25 ms "
                        f"analysis window ({MIN_SAMPLES} samples at 16 kHz): no MFCC baseline")
    mel = log_mel(wave, n_mels=40).mean(0).numpy()
    k = np.arange(1, n_ceps)[:, None]
    dct = np.sqrt(2.0 / len(mel)) * np.cos(np.pi / len(mel) * k * (np.arange(len(mel))[None, :] + 0.5))
    return (dct @ mel).astype(np.float32)


def mean_pixels(utt, frames_dir, size=16):
    """Mean over frames of the RGB frame downscaled to size x size; None if there are no frames."""
    paths = frame_paths(utt, frames_dir)
    if not paths:
        return None
    vecs = [np.asarray(Image.fromarray(read_frame(utt, p)).resize((size, size), Image.BILINEAR), np.float32).ravel()
            for p in paths]
    return np.mean(vecs, axis=0) / 255.0
