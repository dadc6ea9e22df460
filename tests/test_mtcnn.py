"""MTCNN face detection (avtk.face.mtcnn) on a real photo, with the weights of facenet-pytorch 2.6.0.

CI installs the weights (`pip install --no-deps facenet-pytorch==2.6.0`); their absence is a failure here,
not a skip.
"""
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from avtk.errors import AvtkError
from avtk.face import mtcnn
from avtk.face.align import TEMPLATE_112, align_face, apply_affine
from avtk.face.mtcnn import Mtcnn, largest_face

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"

# Oracle from outside: facenet-pytorch 2.6.0's own MTCNN(keep_all=True).detect(image, landmarks=True) on
# grace_hopper.jpg (run once with a stand-in for torchvision's batched_nms, which it imports). It keeps
# float boxes between stages where the original MTCNN truncates them to integers, so the two differ by
# about a pixel.
REFERENCE_BOX = np.array([174.40, 119.56, 355.65, 340.46])
REFERENCE_LANDMARKS = np.array(
    [[221.67, 192.21], [309.83, 186.13], [269.36, 239.17], [232.65, 279.65], [306.64, 275.93]]
)
# The face seen in the photo (hat brim to chin, cheek to cheek), read off by eye.
FACE_REGION = np.array([170.0, 115.0, 360.0, 345.0])


@pytest.fixture(scope="module")
def detector():
    return Mtcnn()


@pytest.fixture(scope="module")
def hopper():
    with Image.open(GRACE_HOPPER) as img:
        return np.asarray(img.convert("RGB"))


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_grace_hopper_one_face_aligns_to_template(detector, hopper):
    boxes, landmarks = detector.detect(hopper)
    assert boxes.shape == (1, 5) and boxes.dtype == np.float32
    assert landmarks.shape == (1, 5, 2) and landmarks.dtype == np.float32
    assert boxes[0, 4] > 0.9
    box, points = boxes[0, :4], landmarks[0]
    assert iou(box, FACE_REGION) > 0.7
    assert np.all((points >= box[:2]) & (points <= box[2:]))
    np.testing.assert_allclose(box, REFERENCE_BOX, atol=3)
    np.testing.assert_allclose(points, REFERENCE_LANDMARKS, atol=2)

    # The template's order: left eye (smaller x in the image), right eye, nose, left and right mouth corners.
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = points
    assert lex + 50 < rex and lmx + 40 < rmx
    assert max(ley, rey) + 20 < ny < min(lmy, rmy) - 20
    assert lex < nx < rex and lmx < nx < rmx

    aligned, m = align_face(hopper, points)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    err = np.linalg.norm(apply_affine(m, points) - TEMPLATE_112, axis=1)
    assert np.all(err[:2] < 3), err
    assert np.all(err[2:] < 5), err
    assert largest_face(boxes, landmarks) == 0


def test_mirrored_photo_keeps_image_left_first(detector, hopper):
    _, points = detector.detect(hopper)
    _, mirrored = detector.detect(np.ascontiguousarray(hopper[:, ::-1]))
    assert mirrored.shape == (1, 5, 2)
    width = hopper.shape[1]
    # Mirroring swaps the anatomical sides; the landmark order stays image-left first.
    back = np.stack([width - 1 - mirrored[0, :, 0], mirrored[0, :, 1]], axis=1)[[1, 0, 2, 4, 3]]
    np.testing.assert_allclose(back, points[0], atol=10)  # eyes are ~90 px apart


def test_face_cut_by_the_border(detector, hopper):
    # The box reaches past the left edge: the crop is padded, the landmarks stay where they were.
    x0 = 190
    boxes, landmarks = detector.detect(np.ascontiguousarray(hopper[:, x0:]))
    assert len(boxes) == 1 and boxes[0, 0] < 0
    np.testing.assert_allclose(landmarks[0] + [x0, 0], REFERENCE_LANDMARKS, atol=4)


@pytest.mark.parametrize("image", [
    np.full((240, 320, 3), 128, np.uint8),
    np.zeros((480, 640, 3), np.uint8),
    np.full((8, 10, 3), 255, np.uint8),  # smaller than the 12-pixel P-Net window
])
def test_no_face_gives_empty_arrays(detector, image):
    boxes, landmarks = detector.detect(image)
    assert boxes.shape == (0, 5) and boxes.dtype == np.float32
    assert landmarks.shape == (0, 5, 2) and landmarks.dtype == np.float32
    assert largest_face(boxes, landmarks) is None


def test_largest_face_by_box_area():
    boxes = np.array([[0, 0, 10, 10, 0.99], [5, 5, 40, 30, 0.8], [0, 0, 20, 20, 0.9]], np.float32)
    assert largest_face(boxes, np.zeros((3, 5, 2), np.float32)) == 1


def test_rejects_non_rgb(detector):
    with pytest.raises(AvtkError, match="RGB"):
        detector.detect(np.zeros((64, 64), np.uint8))


@pytest.mark.parametrize("name,net", [("pnet", mtcnn.PNet), ("rnet", mtcnn.RNet), ("onet", mtcnn.ONet)])
def test_state_dicts_load_strictly(name, net):
    assert Path(mtcnn.weights_dir()).parts[-2:] == ("facenet_pytorch", "data")
    state = mtcnn.load_state_dict(name)
    model = net()
    assert set(state) == set(model.state_dict())
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_missing_weights_package_names_the_install_line(monkeypatch, tmp_path):
    monkeypatch.setattr(mtcnn, "weights_dir", lambda: None)
    with pytest.raises(AvtkError, match="pnet.pt") as err:
        Mtcnn()
    assert "pip install --no-deps facenet-pytorch==2.6.0" in str(err.value)

    monkeypatch.setattr(mtcnn, "weights_dir", lambda: str(tmp_path))  # installed without its data
    with pytest.raises(AvtkError, match="pip install --no-deps facenet-pytorch==2.6.0"):
        Mtcnn()
