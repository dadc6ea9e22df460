"""MTCNN face detection with 5 landmarks, on plain torch.

The cascade of Zhang, Zhang, Li and Qiao, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks" (IEEE Signal Processing Letters, 2016): a fully convolutional proposal net (P-Net)
over an image pyramid, a refinement net (R-Net) on 24x24 crops and an output net (O-Net) on 48x48 crops
that also gives the 5 landmarks. This is our own implementation; the pretrained weights are the
`pnet.pt`, `rnet.pt` and `onet.pt` state dicts shipped as package data of facenet-pytorch 2.6.0 (converted
from the authors' Caffe models). Only those files are read; facenet-pytorch's code is never imported.

Coordinates: boxes follow the original implementation's 1-based inclusive pixel convention (a box
x1..x2 spans x2 - x1 + 1 pixels starting at 0-based column x1 - 1); landmarks are (x, y) in 0-based pixel
coordinates with pixel centres at integers (the convention of avtk.face.align). Landmark order: left eye,
right eye, nose tip, left mouth corner, right mouth corner, "left" meaning the smaller x in the image, the
order of avtk.face.align.TEMPLATE_112.
"""
import importlib.util
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from avtk.errors import AvtkError

INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"
_NMS_BLOCK = 512  # rows of the IoU matrix computed at once (bounds memory for many candidates)


def weights_dir():
    """The directory holding facenet-pytorch's pnet.pt, rnet.pt and onet.pt, or None if not installed.

    find_spec on the top-level package locates it without executing it (its __init__ needs torchvision).
    """
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load_state_dict(name):
    """The state dict `name` ("pnet", "rnet" or "onet") from facenet-pytorch's package data."""
    directory = weights_dir()
    path = None if directory is None else os.path.join(directory, f"{name}.pt")
    if path is None or not os.path.isfile(path):
        raise AvtkError(
            f"MTCNN weights {name}.pt not found: install them with `{INSTALL}` (only the package's weight "
            f"files are used; --no-deps because its metadata pins an old torch)"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _caffe_flatten(x):
    # The weights come from a Caffe model whose feature maps are stored transposed (N, C, W, H).
    return x.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 receptive field, stride 2. Returns (face prob, box reg)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return F.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refinement net on 24x24 crops. Returns (face prob, box reg)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_caffe_flatten(self.prelu3(self.conv3(x)))))
        return F.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net on 48x48 crops. Returns (face prob, box reg, landmarks: 5 x fractions then 5 y)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_caffe_flatten(self.prelu4(self.conv4(x)))))
        return F.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def _normalise(x):
    return (x - 127.5) * 0.0078125


def nms(boxes, scores, threshold, mode="union"):
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    boxes (n, 4) x1, y1, x2, y2 in the inclusive pixel convention (width x2 - x1 + 1). Overlap is
    intersection / union ("union") or intersection / smaller area ("min"); a box is dropped when its
    overlap with a kept, higher-scoring box exceeds `threshold`.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True)
    b = boxes[order].double()
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    removed = np.zeros(n, dtype=bool)
    keep = []
    for start in range(0, n, _NMS_BLOCK):
        stop = min(start + _NMS_BLOCK, n)
        if removed[start:stop].all():
            continue
        rows = b[start:stop, None, :]
        iw = (torch.minimum(rows[..., 2], b[None, :, 2]) - torch.maximum(rows[..., 0], b[None, :, 0]) + 1).clamp(min=0)
        ih = (torch.minimum(rows[..., 3], b[None, :, 3]) - torch.maximum(rows[..., 1], b[None, :, 1]) + 1).clamp(min=0)
        inter = iw * ih
        if mode == "min":
            denom = torch.minimum(area[start:stop, None], area[None, :])
        else:
            denom = area[start:stop, None] + area[None, :] - inter
        over = (inter > threshold * denom).cpu().numpy()
        for i in range(start, stop):
            if not removed[i]:
                keep.append(i)
                removed |= over[i - start]
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def _regress(boxes, reg, plus_one):
    """Apply box regression (dx1, dy1, dx2, dy2 as fractions of the box size)."""
    w = boxes[:, 2] - boxes[:, 0] + (1 if plus_one else 0)
    h = boxes[:, 3] - boxes[:, 1] + (1 if plus_one else 0)
    size = torch.stack([w, h, w, h], dim=1)
    return boxes[:, :4] + reg * size


def _square(boxes):
    """Boxes made square around their centres (side = the longer side)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + (w - side) * 0.5
    y1 = boxes[:, 1] + (h - side) * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _truncate(boxes):
    """Boxes with their corners truncated to integers (as the original does before cropping), dropping
    any left empty."""
    corners = torch.trunc(boxes[:, :4])
    keep = (corners[:, 2] >= corners[:, 0]) & (corners[:, 3] >= corners[:, 1])
    return torch.cat([corners, boxes[:, 4:]], dim=1)[keep]


def _crops(image, boxes, size):
    """Resample each (truncated, 1-based inclusive) box of the image to size x size; zero outside the image.

    image: (3, H, W) float in 0..255. Returns the normalised (n, 3, size, size) batch.
    """
    _, height, width = image.shape
    out = torch.empty((boxes.shape[0], 3, size, size), dtype=image.dtype, device=image.device)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].to(torch.long).tolist()):
        # 0-based half-open source ranges, and where they land in the (possibly padded) crop.
        sx0, sy0, sx1, sy1 = max(x1 - 1, 0), max(y1 - 1, 0), min(x2, width), min(y2, height)
        if sx0 == x1 - 1 and sy0 == y1 - 1 and sx1 == x2 and sy1 == y2:
            crop = image[:, sy0:sy1, sx0:sx1]
        else:
            crop = image.new_zeros((3, y2 - y1 + 1, x2 - x1 + 1))
            if sx1 > sx0 and sy1 > sy0:
                crop[:, sy0 - (y1 - 1):sy1 - (y1 - 1), sx0 - (x1 - 1):sx1 - (x1 - 1)] = image[:, sy0:sy1, sx0:sx1]
        out[k] = F.interpolate(crop[None], size=(size, size), mode="area")[0]
    return _normalise(out)


class Mtcnn:
    """The MTCNN cascade with the pretrained weights of facenet-pytorch's package data.

    min_face: the smallest face side searched, in pixels; thresholds: the face probabilities kept by
    P-Net, R-Net and O-Net; factor: the ratio between consecutive pyramid scales.
    """

    def __init__(self, device="cpu", min_face=20, thresholds=(0.6, 0.7, 0.7), factor=0.709):
        self.device = torch.device(device)
        self.min_face = min_face
        self.thresholds = tuple(thresholds)
        self.factor = factor
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for name in ("pnet", "rnet", "onet"):
            net = getattr(self, name)
            net.load_state_dict(load_state_dict(name), strict=True)
            net.to(self.device).eval()

    def _scales(self, height, width):
        m = 12.0 / self.min_face
        side = min(height, width) * m
        scales = []
        while side >= 12:
            scales.append(m * self.factor ** len(scales))
            side *= self.factor
        return scales

    def _stage1(self, image):
        _, height, width = image.shape
        found = []
        for scale in self._scales(height, width):
            size = (int(height * scale + 1), int(width * scale + 1))
            scaled = _normalise(F.interpolate(image[None], size=size, mode="area"))
            prob, reg = self.pnet(scaled)
            ys, xs = torch.nonzero(prob[0] >= self.thresholds[0], as_tuple=True)
            if ys.numel() == 0:
                continue
            cell = torch.stack([xs, ys, xs, ys], dim=1).to(image.dtype)
            corners = torch.floor((2 * cell + torch.tensor([1.0, 1.0, 12.0, 12.0], device=image.device)) / scale)
            score = prob[0, ys, xs]
            boxes = torch.cat([corners, score[:, None], reg[0, :, ys, xs].T], dim=1)
            found.append(boxes[nms(boxes[:, :4], score, 0.5)])
        if not found:
            return image.new_zeros((0, 5))
        boxes = torch.cat(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        refined = _square(_regress(boxes[:, :4], boxes[:, 5:9], plus_one=False))
        return torch.cat([refined, boxes[:, 4:5]], dim=1)

    def _stage2(self, image, boxes):
        boxes = _truncate(boxes)
        if boxes.shape[0] == 0:
            return boxes
        prob, reg = self.rnet(_crops(image, boxes, 24))
        keep = prob > self.thresholds[1]
        boxes, prob, reg = boxes[keep], prob[keep], reg[keep]
        pick = nms(boxes[:, :4], prob, 0.7)
        boxes, prob, reg = boxes[pick], prob[pick], reg[pick]
        refined = _square(_regress(boxes, reg, plus_one=True))
        return torch.cat([refined, prob[:, None]], dim=1)

    def _stage3(self, image, boxes):
        boxes = _truncate(boxes)[:, :4]
        if boxes.shape[0] == 0:
            return image.new_zeros((0, 5)), image.new_zeros((0, 5, 2))
        prob, reg, marks = self.onet(_crops(image, boxes, 48))
        keep = prob > self.thresholds[2]
        boxes, prob, reg, marks = boxes[keep], prob[keep], reg[keep], marks[keep]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = torch.stack([w * marks[:, :5] + boxes[:, 0:1] - 1, h * marks[:, 5:] + boxes[:, 1:2] - 1], dim=2)
        boxes = _regress(boxes, reg, plus_one=True)
        pick = nms(boxes, prob, 0.7, mode="min")
        return torch.cat([boxes[pick], prob[pick, None]], dim=1), points[pick]

    def detect(self, image):
        """image: RGB uint8 numpy (H, W, 3). Returns (boxes float32 (n, 5) = x1, y1, x2, y2, score;
        landmarks float32 (n, 5, 2) as (x, y)), sorted by score, highest first; n may be 0."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise AvtkError(f"MTCNN expects an RGB (H, W, 3) image, got shape {image.shape}")
        empty = np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        with torch.inference_mode():
            img = torch.from_numpy(np.array(image, dtype=np.float32)).to(self.device).permute(2, 0, 1).contiguous()
            boxes, points = self._stage3(img, self._stage2(img, self._stage1(img)))
            if boxes.shape[0] == 0:
                return empty
            order = torch.argsort(boxes[:, 4], descending=True)
            return boxes[order].cpu().numpy().astype(np.float32), points[order].cpu().numpy().astype(np.float32)


def largest_face(boxes, landmarks):
    """The index of the face with the largest box area, or None if there is none."""
    boxes = np.asarray(boxes)
    if len(boxes) == 0:
        return None
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(np.argmax(area))
