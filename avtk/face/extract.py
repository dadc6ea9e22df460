"""Aligned face frames of utterances: frames from a video (one every `interval` s) or a directory of raw
images, 5 landmarks per frame from a detector or a landmarks file, a similarity warp to the 112x112 template.

A source is a video file or a directory of images. Landmarks come from:
- `landmarks`: the directory's `landmarks.txt`, lines `<frame name> x1 y1 ... x5 y5` (the synthetic corpus
  writes these: ground truth, no detector needed);
- `mtcnn`: the MTCNN detector (avtk.face.mtcnn); the largest face of a frame is kept.
A frame without a face is counted and left out; an utterance whose frames have no face gets an empty directory,
which extraction lists as `no_face`.
"""
import logging
import os

import numpy as np
from PIL import Image

from avtk.errors import AvtkError
from avtk.face.align import align_face
from avtk.face.frames import frame_paths, read_frame
from avtk.io.atomic import atomic_dir

log = logging.getLogger(__name__)
LANDMARKS = "landmarks.txt"


def read_landmarks(utt, path):
    """{frame name: (5, 2) float array} from a landmarks.txt; malformed lines are errors naming the line."""
    table = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise AvtkError(f"utterance {utt}: cannot read {path}: {err.strerror}") from None
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        try:
            points = np.array([float(v) for v in fields[1:]], dtype=np.float64)
        except ValueError:
            points = None
        if points is None or points.size != 10 or not np.isfinite(points).all():
            raise AvtkError(f"{path}:{n}: expected '<frame> x1 y1 ... x5 y5' (10 finite numbers), got {line!r}")
        table[fields[0]] = points.reshape(5, 2)
    return table


def source_frames(utt, source, interval=0.4):
    """(frame name, RGB uint8 image) of a video (one frame every `interval` s, named by 25-fps frame number)
    or of a directory's images (sorted by name)."""
    if os.path.isdir(source):
        for path in frame_paths(utt, source):
            yield path.name, read_frame(utt, path)
        return
    if not os.path.exists(source):
        raise AvtkError(f"utterance {utt}: video {source} does not exist")
    from avtk.io import media

    for t, image in media.video_frames(source, interval):
        yield media.frame_name(t), image


class LandmarksDetector:
    """Landmarks read from each source directory's landmarks.txt."""

    name = "landmarks"

    def __init__(self):
        self.table, self.utt = {}, None

    def start(self, utt, source):
        path = os.path.join(source, LANDMARKS)
        if not os.path.isdir(source) or not os.path.exists(path):
            raise AvtkError(f"utterance {utt}: {path} does not exist (--detector landmarks needs a directory of "
                            "frames with a landmarks.txt; use --detector mtcnn for other sources)")
        self.table, self.utt = read_landmarks(utt, path), utt

    def __call__(self, name, image):
        return self.table.get(name)


class MtcnnDetector:
    """The largest MTCNN face of each frame."""

    name = "mtcnn"

    def __init__(self, device="cpu", min_face=20):
        from avtk.face.mtcnn import Mtcnn

        self.mtcnn = Mtcnn(device=device, min_face=min_face)

    def start(self, utt, source):
        pass

    def __call__(self, name, image):
        from avtk.face.mtcnn import largest_face

        boxes, landmarks = self.mtcnn.detect(image)
        best = largest_face(boxes, landmarks)
        return None if best is None else landmarks[best].astype(np.float64)


def build_detector(name, device="cpu", min_face=20):
    if name == "landmarks":
        return LandmarksDetector()
    if name == "mtcnn":
        return MtcnnDetector(device, min_face)
    raise AvtkError(f"unknown face detector '{name}'; choose landmarks or mtcnn")


def extract_utterance(utt, source, out_dir, detector, interval=0.4, size=112, quality=95):
    """Write the aligned faces of one utterance to out_dir (replaced atomically); returns (frames, faces)."""
    detector.start(utt, source)
    frames = faces = 0
    with atomic_dir(out_dir) as tmp:
        for name, image in source_frames(utt, source, interval):
            frames += 1
            points = detector(name, image)
            if points is None:
                continue
            aligned, _ = align_face(image, points, size)
            Image.fromarray(aligned).save(os.path.join(tmp, os.path.splitext(name)[0] + ".jpg"), format="JPEG",
                                          quality=quality)
            faces += 1
    return frames, faces
