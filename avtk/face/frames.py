"""Face frames of an utterance: a directory of aligned images (frames.scp: `<utt> <directory>`).

Frames are always taken in sorted name order (the seed's unsorted glob made the choice depend on the file
system), decoded to RGB uint8 (height, width, 3) by `read_frame` (every reader of frames goes through it, so
every image mode follows one rule), and checked for the size the network expects.
"""
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from avtk.errors import AvtkError
from avtk.io.atomic import note_input

EXTENSIONS = (".jpg", ".jpeg", ".png")


def frame_paths(utt, frames_dir):
    """The image frames of an utterance in sorted name order; a missing directory names the utterance."""
    d = Path(frames_dir)
    return [d / name for name in frame_names(utt, frames_dir)]


def frame_names(utt, frames_dir):
    """The file names (str) of frame_paths, sorted, from one os.scandir and without a Path per frame (the face
    training index holds tens of millions of frames); a missing directory names the utterance."""
    try:
        with os.scandir(frames_dir) as entries:
            return sorted(e.name for e in entries if os.path.splitext(e.name)[1].lower() in EXTENSIONS)
    except FileNotFoundError:
        raise AvtkError(f"utterance {utt}: frames directory {frames_dir} does not exist") from None
    except NotADirectoryError:
        raise AvtkError(f"utterance {utt}: {frames_dir} is a file, not a directory of frames") from None


# PIL modes whose pixels are 8-bit (or 1-bit) samples that PIL's convert("RGB") maps to RGB exactly: alpha is
# dropped, a palette looked up, grey repeated, CMYK and YCbCr converted by PIL's formulas.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
# 16-bit unsigned grey (PNG and TIFF open as these); convert("RGB") would clip them to 0-255: a white frame.
SIXTEEN_BIT_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _rgb(img):
    """RGB uint8 (H, W, 3) of an opened PIL image, or None when its mode has no defined 8-bit picture."""
    if img.mode in EIGHT_BIT_MODES:
        return np.asarray(img.convert("RGB"))
    if img.mode in SIXTEEN_BIT_GREY_MODES:
        grey = np.asarray(img).astype(np.float64)  # native, little or big endian uint16
        grey = np.rint(grey / 257.0).clip(0, 255).astype(np.uint8)  # 65535 -> 255, 0 -> 0
        return np.repeat(grey[..., None], 3, axis=2)
    return None


def read_frame(utt, path, size=None):
    """A face frame as RGB uint8 (H, W, 3): the one image reader of training, extraction, verify,
    extract-face-frames and the baselines.

    Every PIL mode either gives the picture scaled to 8 bits or is an error: 1/L/LA/P/PA/RGB/RGBA/RGBX/CMYK/
    YCbCr through PIL's conversion (alpha dropped); 16-bit grey (I;16, I;16B, ...) divided by 257 (16-bit RGB
    PNGs open in PIL as 8-bit RGB already); 32-bit integer or float pixels (modes I, F), whose white level the
    file does not state, and other modes (HSV, LAB, ...) are errors. Raises AvtkError naming the utterance
    and the file for an unreadable image, an unsupported mode, or a size other than `size` x `size`.
    """
    try:
        with Image.open(path) as img:
            mode = img.mode
            rgb = _rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL raises these on truncated, foreign or huge files
        raise AvtkError(f"utterance {utt}: cannot read frame {path}: {err}") from None
    note_input(path, bulk=True)  # an input of the running command: no output may replace it
    if rgb is None:
        raise AvtkError(f"utterance {utt}: frame {path} has PIL mode {mode} ("
                        + ({"I": "32-bit integer pixels", "F": "32-bit float pixels"}[mode]
                           + ", whose white level the file does not state" if mode in ("I", "F")
                           else "not a picture mode avtk reads")
                        + "); save frames as 8-bit or 16-bit grey, RGB or RGBA images")
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
