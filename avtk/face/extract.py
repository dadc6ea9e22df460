"""Aligned face frames of utterances: frames from a video (one every `interval` s) or a directory of raw
images, 5 landmarks per frame from a detector or a landmarks file, a similarity warp to the 112x112 template.

A source is a video file or a directory of images. Landmarks come from:
- `landmarks`: the directory's `landmarks.txt`, lines `<frame name> x1 y1 ... x5 y5` (the synthetic corpus
  writes these: ground truth, no detector needed);
- `mtcnn`: the MTCNN detector (avtk.face.mtcnn); the largest face of a frame is kept.
A frame without a face is counted and left out; so is a frame whose landmarks cannot align a face (coinciding
or outside the image) or whose warp is uniform (avtk.face.align.NoFace): `align_frame` decides, for
extract-face-frames and avtk verify alike. An utterance whose frames have no face gets an empty directory, which
extraction lists as `no_face`. Each output file is one distinct frame: a video sampling time that picks a frame
already taken (variable frame rate) adds nothing, and two frames that would get one file name are an error, so
the counts logged are the files on disk.
"""
import logging
import os

import numpy as np
from PIL import Image

from avtk.data.table import numbered_fields
from avtk.errors import AvtkError
from avtk.face.align import NoFace, align_face
from avtk.face.frames import frame_paths, read_frame
from avtk.io.atomic import atomic_dir

log = logging.getLogger(__name__)
LANDMARKS = "landmarks.txt"


def read_landmarks(utt, path):
    """{frame name: (5, 2) float array} from a landmarks.txt, read by the text rule of avtk.data.table (a BOM
    or CRLF is accepted; bad bytes or invisible characters are errors naming file:line, as are malformed
    lines, and a frame listed twice, by the duplicate-key rule of `avtk.data.table.read_dict`)."""
    table, first = {}, {}
    for n, fields, line in numbered_fields(path, f"landmarks of utterance {utt}: "):
        if fields[0] in first:
            raise AvtkError(f"{path}:{n}: duplicate key {fields[0]!r} (first on line {first[fields[0]]})")
        first[fields[0]] = n
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


def align_frame(detector, name, image, size=112):
    """(aligned RGB uint8 (size, size, 3), None) for a frame with a usable face, else (None, why not): no face
    detected, or landmarks / a warp that avtk.face.align rejects (NoFace)."""
    points = detector(name, image)
    if points is None:
        return None, "no face detected"
    try:
        return align_face(image, points, size)[0], None
    except NoFace as err:
        return None, str(err)


def extract_utterance(utt, source, out_dir, detector, interval=0.4, size=112, quality=95):
    """Write the aligned faces of one utterance to out_dir (replaced atomically); returns (frames, faces,
    rejected): distinct frames read, faces written (the files in out_dir), and frames whose landmarks or warp
    were rejected (counted among the frames without a face). A video frame whose 25-fps name an earlier frame
    already took (under 1/25 s apart) is left out and not counted; two images of a directory that would be
    written under one name (e.g. 0010.jpg and 0010.png) are an AvtkError naming both."""
    detector.start(utt, source)
    frames = faces = rejected = 0
    written = {}
    with atomic_dir(out_dir) as tmp:
        for name, image in source_frames(utt, source, interval):
            out_name = os.path.splitext(name)[0] + ".jpg"
            if out_name in written:
                if not os.path.isdir(source):  # video frames < 1/25 s apart (variable frame rate): keep the first
                    log.debug("utterance %s: frame at %s again named %s; kept the first", utt, source, out_name)
                    continue
                raise AvtkError(f"utterance {utt}: frames {written[out_name]} and {name} of {source} would both "
                                f"be written as {out_name}")
            written[out_name] = name
            frames += 1
            aligned, why = align_frame(detector, name, image, size)
            if aligned is None:
                if why != "no face detected":
                    rejected += 1
                    log.debug("utterance %s: frame %s counted without a face: %s", utt, name, why)
                continue
            Image.fromarray(aligned).save(os.path.join(tmp, out_name), format="JPEG", quality=quality)
            faces += 1
    return frames, faces, rejected
