"""Parametric faces: a persistent drawing per speaker, rendered per session with pose and lighting.

Faces are drawn in the coordinates of the aligned 112x112 template, with the five landmarks exactly at the
template points; a raw frame is that drawing warped by a random similarity (the head pose) onto a background.
So the ground-truth landmarks of a raw frame are the pose applied to the template.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from avtk.face.align import TEMPLATE_112, apply_affine, warp_affine

SPRITE = 160        # the drawing covers template coordinates [-24, 136)
SPRITE_OFFSET = 24.0
RAW = 160           # raw frames are RAW x RAW


@dataclass
class FaceIdentity:
    skin: np.ndarray        # RGB 0..1
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    face_w: float           # half width of the face oval (px)
    face_top: float         # forehead height above the eyes
    chin: float             # chin y
    jaw_power: float        # superellipse exponent of the lower face (2 = round, lower = pointy)
    hairline: float         # y of the hairline
    hair_volume: float      # extra hair above the skull
    hair_length: float      # how far hair falls beside the face (y)
    fringe: bool
    eye_size: float
    brow_thickness: float
    brow_tilt: float
    brow_height: float
    nose_width: float
    lip_thickness: float
    ear_size: float
    beard: bool


@dataclass
class FaceSession:
    light_dir: float        # radians
    light_strength: float
    cast: np.ndarray        # RGB multipliers
    brightness: float
    background: np.ndarray  # (2, 3) two RGB corners of a gradient
    clutter: np.ndarray     # (4, 5) background blobs: x, y, r, grey, alpha
    glasses: bool
    glasses_colour: np.ndarray
    blur: float             # Gaussian sigma (px) in the raw frame
    noise: float            # pixel noise std (0..255)
    pose_rot: float         # mean in-plane rotation (rad)
    pose_scale: float       # mean scale of the face in the raw frame
    pose_shift: np.ndarray  # mean offset of the face centre (px)


def sample_identity(rng):
    tone = rng.uniform(0.25, 1.0)
    skin = np.array([0.95, 0.78, 0.66]) * tone + np.array([0.25, 0.15, 0.1]) * (1 - tone)
    skin = np.clip(skin + rng.normal(0, 0.03, 3), 0, 1)
    hair = np.clip(rng.choice([np.array([0.1, 0.07, 0.05]), np.array([0.35, 0.22, 0.1]),
                               np.array([0.75, 0.6, 0.35]), np.array([0.55, 0.25, 0.1]),
                               np.array([0.6, 0.6, 0.6])]) + rng.normal(0, 0.04, 3), 0, 1)
    return FaceIdentity(
        skin=skin, hair=hair,
        iris=np.clip(rng.choice([np.array([0.3, 0.2, 0.1]), np.array([0.3, 0.45, 0.7]),
                                 np.array([0.35, 0.5, 0.3])]) + rng.normal(0, 0.05, 3), 0, 1),
        lips=np.clip(skin * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 0.04, 3), 0, 1),
        face_w=float(rng.uniform(30, 40)), face_top=float(rng.uniform(30, 42)), chin=float(rng.uniform(104, 116)),
        jaw_power=float(rng.uniform(1.6, 2.6)), hairline=float(rng.uniform(18, 32)),
        hair_volume=float(rng.uniform(0, 14)), hair_length=float(rng.uniform(40, 125)), fringe=bool(rng.random() < 0.35),
        eye_size=float(rng.uniform(0.8, 1.25)), brow_thickness=float(rng.uniform(1.5, 4.0)),
        brow_tilt=float(rng.uniform(-0.25, 0.25)), brow_height=float(rng.uniform(7, 12)),
        nose_width=float(rng.uniform(5, 10)), lip_thickness=float(rng.uniform(2, 5)),
        ear_size=float(rng.uniform(7, 12)), beard=bool(rng.random() < 0.25),
    )


def sample_face_session(rng, strength=1.0):
    bg = rng.uniform(0.1, 0.9, (2, 3))
    return FaceSession(
        light_dir=float(rng.uniform(0, 2 * np.pi)), light_strength=float(rng.uniform(0, 0.5) * strength),
        cast=np.exp(rng.normal(0, 0.08 * strength, 3)), brightness=float(np.exp(rng.normal(0, 0.2 * strength))),
        background=bg, clutter=np.column_stack([rng.uniform(0, RAW, (4, 2)), rng.uniform(10, 50, 4),
                                                rng.uniform(0, 1, 4), rng.uniform(0.3, 0.9, 4)]),
        glasses=bool(rng.random() < 0.25), glasses_colour=rng.uniform(0, 0.5, 3),
        blur=float(rng.uniform(0.0, 1.5 * strength)), noise=float(rng.uniform(1, 8 * strength)),
        pose_rot=float(rng.normal(0, 0.12)), pose_scale=float(rng.uniform(0.85, 1.15)),
        pose_shift=rng.normal(0, 6, 2),
    )


def _grid():
    ys, xs = np.mgrid[0:SPRITE, 0:SPRITE].astype(np.float32) - SPRITE_OFFSET
    return xs, ys


def _soft(dist):
    """Coverage from a signed distance in px (negative inside), anti-aliased over one pixel."""
    return np.clip(0.5 - dist, 0.0, 1.0)


def _ellipse(xs, ys, cx, cy, rx, ry, power=2.0):
    r = (np.abs(xs - cx) / rx) ** power + (np.abs(ys - cy) / ry) ** power
    return _soft((r ** (1.0 / power) - 1.0) * min(rx, ry))


def _segment(xs, ys, x0, y0, x1, y1, width):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    return _soft(np.hypot(xs - x0 - t * dx, ys - y0 - t * dy) - width / 2)


def render_sprite(ident, sess, mouth_open=0.0, smile=0.0, eye_open=1.0):
    """RGBA drawing (SPRITE x SPRITE, float 0..1) of the face in template coordinates."""
    xs, ys = _grid()
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = TEMPLATE_112
    cx, eye_y = (lex + rex) / 2, (ley + rey) / 2
    top, chin = eye_y - ident.face_top, ident.chin
    mid = (top + chin) / 2
    rgb = np.zeros((SPRITE, SPRITE, 3), np.float32)
    alpha = np.zeros((SPRITE, SPRITE), np.float32)

    def paint(mask, colour):
        nonlocal rgb, alpha
        rgb = rgb * (1 - mask[..., None]) + mask[..., None] * np.asarray(colour, np.float32)
        alpha = np.maximum(alpha, mask)

    # Hair behind the head, down to hair_length.
    back = _ellipse(xs, ys, cx, top + ident.face_top * 0.6, ident.face_w + 6 + ident.hair_volume * 0.4,
                    ident.face_top * 0.6 + 8 + ident.hair_volume)
    back = np.maximum(back, _ellipse(xs, ys, cx, (top + ident.hair_length) / 2 + 10, ident.face_w + 5,
                                     max((ident.hair_length - top) / 2, 5), power=4) * (ys > eye_y - 10))
    paint(back, ident.hair * 0.85)
    for side in (-1, 1):
        paint(_ellipse(xs, ys, cx + side * ident.face_w, eye_y + 14, ident.ear_size * 0.6, ident.ear_size), ident.skin * 0.9)
    upper = _ellipse(xs, ys, cx, mid, ident.face_w, (chin - top) / 2)
    lower = _ellipse(xs, ys, cx, mid, ident.face_w, (chin - top) / 2, power=ident.jaw_power)
    face = np.where(ys < mid, upper, lower)
    paint(face, ident.skin)
    if ident.beard:
        paint(face * _soft(lmy - 6 - ys) * 0.8, ident.hair * 0.9)
    # Nose: a shaded wedge from between the eyes down to the tip, and nostrils.
    wedge = _segment(xs, ys, nx, eye_y + 4, nx + 1, ny - 2, ident.nose_width * 0.6) * 0.35
    paint(wedge, ident.skin * 0.75)
    for side in (-1, 1):
        paint(_ellipse(xs, ys, nx + side * ident.nose_width * 0.45, ny + 2, 2.2, 1.3) * 0.8, ident.skin * 0.45)
    # Mouth: lips through both mouth corners, open by mouth_open, corners raised by smile.
    mouth_cy = (lmy + rmy) / 2 - smile * 2
    half = (rmx - lmx) / 2
    lip_h = ident.lip_thickness + mouth_open * 6
    bent = ys + smile * 3 * (1 - ((xs - cx) / half) ** 2)  # a smile lifts the corners relative to the middle
    lips = _ellipse(xs, bent, cx, mouth_cy, half, lip_h)
    paint(lips, ident.lips)
    paint(_ellipse(xs, bent, cx, mouth_cy, half * 0.85, 0.6 + mouth_open * 5), np.array([0.25, 0.08, 0.08]))
    # Eyes: white, iris, pupil, lid closing by eye_open.
    for ex, ey, sgn in ((lex, ley, -1), (rex, rey, 1)):
        rx, ry = 6.0 * ident.eye_size, 3.2 * ident.eye_size * max(eye_open, 0.08)
        white = _ellipse(xs, ys, ex, ey, rx, ry)
        paint(white, np.array([0.95, 0.95, 0.93]))
        paint(_ellipse(xs, ys, ex, ey, 2.8 * ident.eye_size, 2.8 * ident.eye_size) * white, ident.iris)
        paint(_ellipse(xs, ys, ex, ey, 1.2 * ident.eye_size, 1.2 * ident.eye_size) * white, np.array([0.05, 0.05, 0.05]))
        by = ey - ident.brow_height
        paint(_segment(xs, ys, ex - 7 * sgn, by + ident.brow_tilt * 7, ex + 7 * sgn, by - ident.brow_tilt * 7,
                       ident.brow_thickness), ident.hair * 0.7)
    # Hair over the forehead.
    cap = _ellipse(xs, ys, cx, top + 2, ident.face_w + 3 + ident.hair_volume * 0.3, ident.face_top * 0.45 + ident.hair_volume * 0.6)
    cap *= _soft(ys - (ident.hairline + (8 if ident.fringe else 0)))
    paint(cap, ident.hair)
    if sess.glasses:
        for ex, ey in ((lex, ley), (rex, rey)):
            ring = _ellipse(xs, ys, ex, ey, 10, 8) * (1 - _ellipse(xs, ys, ex, ey, 8.5, 6.5))
            paint(ring, sess.glasses_colour)
        paint(_segment(xs, ys, lex + 10, ley - 1, rex - 10, rey - 1, 1.5), sess.glasses_colour)
    # Lighting: a directional gradient across the head, a colour cast and the overall brightness.
    shade = 1.0 + sess.light_strength * (np.cos(sess.light_dir) * (xs - cx) + np.sin(sess.light_dir) * (ys - mid)) / 50.0
    rgb = np.clip(rgb * shade[..., None] * sess.cast * sess.brightness, 0, 1)
    return np.dstack([rgb, alpha]).astype(np.float32)


def render_background(sess):
    """The session's backdrop (RAW x RAW RGB, 0..1): a gradient with a few soft blobs."""
    ys, xs = np.mgrid[0:RAW, 0:RAW].astype(np.float32)
    t = ((xs + ys) / (2 * RAW))[..., None]
    bg = sess.background[0] * (1 - t) + sess.background[1] * t
    for x, y, r, grey, a in sess.clutter:
        bg = bg * (1 - a * _ellipse(xs, ys, x, y, r, r * 0.7)[..., None]) + a * grey * _ellipse(xs, ys, x, y, r, r * 0.7)[..., None]
    return (bg * sess.brightness).astype(np.float32)


def frame_pose(sess, rng):
    """A similarity (2x3) from template coordinates to the raw frame for one frame of the session."""
    rot = sess.pose_rot + rng.normal(0, 0.04)
    scale = sess.pose_scale * np.exp(rng.normal(0, 0.03))
    centre = np.array([RAW / 2, RAW / 2]) + sess.pose_shift + rng.normal(0, 2, 2)
    c, s = scale * np.cos(rot), scale * np.sin(rot)
    a = np.array([[c, -s], [s, c]])
    return np.hstack([a, (centre - a @ np.array([56.0, 66.0]))[:, None]])


def _gaussian_blur(img, sigma):
    if sigma < 0.3:
        return img
    r = int(np.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k /= k.sum()
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[:, None]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x[:, 0].numpy().transpose(1, 2, 0)


def blur_layers(sprite, background, sess):
    """Blur the drawing (premultiplied by its alpha) and the backdrop once per utterance: blur is linear."""
    pre = np.dstack([sprite[..., :3] * sprite[..., 3:], sprite[..., 3:]])
    return _gaussian_blur(pre, sess.blur), _gaussian_blur(background, sess.blur)


def raw_frame(sprite_pre, background, sess, pose, rng):
    """Compose one raw RGB uint8 frame and return it with its 5 ground-truth landmarks (x, y).

    sprite_pre and background come from blur_layers; pose maps template coordinates to the raw frame.
    """
    shift = np.array([[1, 0, -SPRITE_OFFSET], [0, 1, -SPRITE_OFFSET], [0, 0, 1]])  # sprite px -> template
    layer = warp_affine(sprite_pre, pose @ shift, (RAW, RAW))
    img = background * (1 - layer[..., 3:]) + layer[..., :3]
    img = img * 255.0 + rng.standard_normal(img.shape, dtype=np.float32) * sess.noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), apply_affine(pose, TEMPLATE_112)
