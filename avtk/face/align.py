"""5-point face alignment: least-squares similarity (Umeyama) to the insightface template, affine warp.

Coordinates are (x, y) in pixels with pixel centres at integers, as in OpenCV's warpAffine.

Landmarks that cannot make a face (not 5 finite points, a point outside the image, two points that coincide)
and warps that bring nothing of the image into the output (uniform, e.g. all black) raise `NoFace`; callers
count such a frame as one without a face.
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F

# insightface's 112x112 template: left eye, right eye, nose tip, left mouth corner, right mouth corner.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

# Two landmarks closer than this (pixels) coincide: a detector's or a landmarks file's failure, not a face.
MIN_SEPARATION = 1.0


class NoFace(ValueError):
    """Landmarks or a warp that give no usable aligned face; the message says why."""


def landmarks_problem(landmarks, width, height):
    """Why 5 landmarks cannot align a face in a width x height image, or None when they can.

    landmarks: (5, 2) (x, y) pixels. Problems: not 5 finite points; a point outside the image (pixel centres
    at integers, so the image spans [-0.5, width - 0.5] x [-0.5, height - 0.5]); two points closer than
    MIN_SEPARATION pixels.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        return f"landmarks are not 5 finite (x, y) points: {np.array2string(points.ravel(), precision=1)}"
    outside = ((points < -0.5) | (points > np.array([width, height]) - 0.5)).any(axis=1)
    if outside.any():
        i = int(np.argmax(outside))
        return (f"landmark {i + 1} ({points[i, 0]:.1f}, {points[i, 1]:.1f}) is outside the "
                f"{width}x{height} image")
    dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    if dist.min() < MIN_SEPARATION:
        i, j = np.unravel_index(np.argmin(dist), dist.shape)
        return f"landmarks {i + 1} and {j + 1} coincide ({dist[i, j]:.2f} px apart)"
    return None


def umeyama(src, dst):
    """The 2x3 similarity [sR | t] minimising sum ||sR src_i + t - dst_i||^2 (Umeyama 1991)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # reflection: flip the weakest axis
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_s = (xs ** 2).sum() / len(src)
    scale = (sing * d).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply_affine(m, points):
    """Map (N, 2) points through a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ m[:, :2].T + m[:, 2]


def invert_affine(m):
    a = np.linalg.inv(m[:, :2])
    return np.hstack([a, -a @ m[:, 2:3]])


@functools.lru_cache(maxsize=8)
def _pixel_grid(height, width):
    return torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")


def warp_affine(image, m, size):
    """Warp an (H, W[, C]) image by the 2x3 matrix `m` (source -> output) to `size` = (width, height).

    Bilinear sampling with a zero border (torch's grid_sample); uint8 in gives uint8 out.
    """
    width, height = size
    src = np.asarray(image)
    img = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32))
    img = img.reshape(img.shape[0], img.shape[1], -1).permute(2, 0, 1)[None]
    h, w = src.shape[:2]
    inv = torch.from_numpy(invert_affine(m))
    ys, xs = _pixel_grid(height, width)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    # align_corners=True: normalised -1 and 1 are the centres of the first and last pixels.
    grid = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], dim=-1).float()[None]
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    out = out.permute(1, 2, 0).numpy()
    out = out[..., 0] if src.ndim == 2 else out
    if src.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out


def align_face(image, landmarks, size=112):
    """Align an image (H, W[, C]) to the size x size template from its 5 landmarks (5, 2); returns
    (aligned, 2x3 matrix). Raises NoFace when `landmarks_problem` finds one, or when the warp is uniform
    (every output pixel the same value: nothing of the image, e.g. all black)."""
    height, width = np.asarray(image).shape[:2]
    problem = landmarks_problem(landmarks, width, height)
    if problem:
        raise NoFace(problem)
    m = umeyama(landmarks, TEMPLATE_112 * (size / 112.0))
    if not np.isfinite(m).all():
        raise NoFace("the landmarks give no similarity transform")
    aligned = warp_affine(image, m, (size, size))
    if aligned.min() == aligned.max():
        raise NoFace(f"the aligned face is uniform (every pixel {aligned.flat[0]})")
    return aligned, m
