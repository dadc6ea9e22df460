"""Face frames of an utterance: a directory of aligned images (frames.scp: `<utt> <directory>`).

Frames are always taken in sorted name order (the seed's unsorted glob made the choice depend on the file
system), decoded to RGB uint8 (height, width, 3), and checked for the size the network expects.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from avtk.errors import AvtkError

EXTENSIONS = (".jpg", ".jpeg", ".png")


def frame_paths(utt, frames_dir):
    """The image frames of an utterance in sorted name order; a missing directory names the utterance."""
    d = Path(frames_dir)
    if not d.is_dir():
        raise AvtkError(f"utterance {utt}: frames directory {frames_dir} does not exist")
    return sorted(p for p in d.iterdir() if p.suffix.lower() in EXTENSIONS)


def read_frame(utt, path, size=None):
    """An RGB uint8 (H, W, 3) array; an unreadable or wrongly sized image is an error naming the file."""
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises these on truncated or foreign files
        raise AvtkError(f"utterance {utt}: cannot read frame {path}: {err}") from None
    if size is not None and rgb.shape[:2] != (size, size):
        raise AvtkError(f"utterance {utt}: frame {path} is {rgb.shape[1]}x{rgb.shape[0]}, the model expects "
                        f"{size}x{size} aligned faces (align them with avtk extract-face-frames)")
    return rgb


def evenly_spaced(paths, n):
    """The seed's test-time choice of n frames: linspace over the frames, or all frames and the last one
    repeated when there are fewer than n."""
    if len(paths) >= n:
        return [paths[i] for i in np.linspace(0, len(paths) - 1, n).astype(np.int64)]
    return list(paths) + [paths[-1]] * (n - len(paths)) if paths else []


def _gaussian_blur(image, kernel, sigma):
    x = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    img = torch.from_numpy(np.array(image)).permute(2, 0, 1)[:, None].float()  # (3, 1, H, W)
    pad = kernel // 2
    img = F.conv2d(F.pad(img, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    img = F.conv2d(F.pad(img, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1))
    return img[:, 0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def augment_face(image, rng, flip=0.5, blur=0.5, grey=0.2):
    """The seed's face augmentation with probabilities: horizontal flip; Gaussian blur with an odd kernel of
    5-9 pixels and sigma in [0.1, 5]; greyscale (ITU-R 601 luma in all three channels)."""
    if rng.random() < flip:
        image = image[:, ::-1]
    if rng.random() < blur:
        image = _gaussian_blur(image, int(rng.choice([5, 7, 9])), float(rng.uniform(0.1, 5.0)))
    if rng.random() < grey:
        luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        image = np.repeat(np.round(luma).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return np.ascontiguousarray(image)
