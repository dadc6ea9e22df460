"""Trivial embeddings that trained networks must beat: mean MFCC for speech, raw pixels for faces."""
from pathlib import Path

import numpy as np
from PIL import Image

from avtk.errors import AvtkError
from avtk.features.mel import log_mel


def mean_mfcc(wave, n_ceps=20):
    """The utterance's mean MFCC c1..c19 (DCT-II of the 40-band log-mel); c0, the level, is left out."""
    mel = log_mel(wave, n_mels=40).mean(0).numpy()
    k = np.arange(1, n_ceps)[:, None]
    dct = np.sqrt(2.0 / len(mel)) * np.cos(np.pi / len(mel) * k * (np.arange(len(mel))[None, :] + 0.5))
    return (dct @ mel).astype(np.float32)


def frame_paths(utt, frames_dir):
    """The jpg frames of an utterance in sorted name order; an unreadable directory names the utterance."""
    d = Path(frames_dir)
    if not d.is_dir():
        raise AvtkError(f"utterance {utt}: frames directory {frames_dir} does not exist")
    return sorted(d.glob("*.jpg"))


def mean_pixels(utt, frames_dir, size=16):
    """Mean over frames of the RGB frame downscaled to size x size; None if there are no frames."""
    paths = frame_paths(utt, frames_dir)
    if not paths:
        return None
    vecs = []
    for p in paths:
        try:
            with Image.open(p) as img:
                vecs.append(np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), np.float32).ravel())
        except OSError as err:
            raise AvtkError(f"utterance {utt}: cannot read frame {p}: {err}") from None
    return np.mean(vecs, axis=0) / 255.0
