"""ResNet34 speaker encoder (the r-vector / WeSpeaker "ResNet34" design) with time-masked statistics pooling.

Input: features (batch, in_dim, frames), treated as a one-channel image (batch, 1, in_dim, frames);
output: (batch, embed_dim) embeddings.

- stem: conv1 3x3 (1 -> w, no bias) -> bn1 -> ReLU;
- layer1..layer4: BasicBlocks [3, 4, 6, 3] with widths w, 2w, 4w, 8w and strides 1, 2, 2, 2 (on both
  frequency and time); a block is conv1 3x3 (carries the stride) -> bn1 -> ReLU -> conv2 3x3 -> bn2, plus the
  shortcut (identity, or 1x1 conv with the stride -> BN when the shape changes), then ReLU;
- temporal statistics pooling: the (channels x frequency) map is flattened per frame, and its mean and
  standard deviation over time (unbiased variance + 1e-7 under the root) are concatenated;
- seg_1: Linear(2 * 8w * F' -> embed_dim), F' = in_dim after three stride-2 halvings (ceil).

Parameter names follow WeSpeaker's (`conv1`, `bn1`, `layer{1-4}.{i}.{conv1,bn1,conv2,bn2,shortcut.0,
shortcut.1}`, `seg_1`), and so does the input orientation (frequency on the image's height). At in_dim 80,
base_width 32, embed_dim 256 the network has 6,634,336 parameters.

Variable lengths: with `lengths` (valid frames per item) the padded time steps are zeroed after every
conv/BN/ReLU and at every block output; each stride-2 stage maps a length L to ceil(L / 2), exactly the
length of the unpadded item's map (3x3 convs, padding 1). The pooling statistics are masked, so a padded
batch in eval mode equals per-item runs up to float rounding. The variance divisor is max(T' - 1, 1), so a
1-step map gives std sqrt(1e-7) instead of NaN.
"""
import torch
import torch.nn.functional as F
from torch import nn

from avtk.errors import AvtkError
from avtk.models.ecapa import check_lengths, length_mask


def _time_mask(lengths, like, dtype):
    """(batch, 1, 1, frames) mask of the first lengths[i] frames; `like` is (batch, frames), see length_mask."""
    return length_mask(lengths, like, dtype).unsqueeze(1)


def _zero_pad(x, mask):
    return x if mask is None else x * mask


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x, mask=None):
        """x is zero on padded steps; mask is at this block's output time resolution."""
        out = _zero_pad(F.relu(self.bn1(self.conv1(x))), mask)
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return _zero_pad(F.relu(out), mask)


class ResNet34(nn.Module):
    """ResNet34 speaker encoder; `forward(x, lengths=None)` with x (B, in_dim, T) -> (B, embed_dim)."""

    blocks = (3, 4, 6, 3)
    strides = (1, 2, 2, 2)

    def __init__(self, in_dim=80, embed_dim=256, base_width=32):
        super().__init__()
        self.in_dim, self.embed_dim, self.base_width = in_dim, embed_dim, base_width
        self.conv1 = nn.Conv2d(1, base_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        in_planes = base_width
        freq = in_dim
        for i, (n, stride) in enumerate(zip(self.blocks, self.strides), 1):
            planes = base_width * 2 ** (i - 1)
            layer = []
            for j in range(n):
                layer.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            freq = -(-freq // stride)
        self.stats_dim = in_planes * freq
        self.seg_1 = nn.Linear(2 * self.stats_dim, embed_dim)

    def forward(self, x, lengths=None):
        if x.dim() != 3 or x.shape[1] != self.in_dim:
            raise AvtkError(f"ResNet34 expects features (batch, {self.in_dim}, frames), got {tuple(x.shape)}")
        frames = x.shape[-1]
        mask = None
        if lengths is not None:
            lengths = check_lengths(lengths, frames, x.shape[0])
            if lengths.device != x.device:  # conditional: .to(device) would record the device in a trace
                lengths = lengths.to(x.device)
            if not bool((lengths < frames).any()):
                lengths = None
        x = x.unsqueeze(1)
        if lengths is not None:
            mask = _time_mask(lengths, x[:, 0, 0], x.dtype)
            x = x * mask
        x = _zero_pad(F.relu(self.bn1(self.conv1(x))), mask)
        for i, stride in enumerate(self.strides, 1):
            for j, block in enumerate(getattr(self, f"layer{i}")):
                if lengths is not None and j == 0 and stride != 1:
                    lengths = (lengths + stride - 1) // stride
                    mask = _time_mask(lengths, x[:, 0, 0, ::stride], x.dtype)  # ceil(T / stride) frames
                x = block(x, mask)
        h = x.flatten(1, 2)  # (B, C * F', T')
        if mask is None:
            count = h.shape[-1]
            mean = h.mean(dim=-1)
            var = ((h - mean[..., None]) ** 2).sum(dim=-1) / max(count - 1, 1)
        else:
            m = mask[:, 0]  # (B, 1, T')
            count = lengths.to(h.dtype)[:, None]
            mean = h.sum(dim=-1) / count
            dev = (h - mean[..., None]) * m
            var = (dev * dev).sum(dim=-1) / (count - 1).clamp(min=1)
        stats = torch.cat([mean, (var + 1e-7).sqrt()], dim=1)
        return self.seg_1(stats)
