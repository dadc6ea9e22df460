"""ResNet speaker encoders (the r-vector / WeSpeaker "ResNet" design) with time-masked statistics pooling:
ResNet34 (BasicBlocks) and the deep ResNet221 and ResNet293 (Bottleneck blocks).

Input: features (batch, in_dim, frames), treated as a one-channel image (batch, 1, in_dim, frames);
output: (batch, embed_dim) embeddings.

- stem: conv1 3x3 (1 -> w, no bias) -> bn1 -> ReLU;
- layer1..layer4: blocks with widths w, 2w, 4w, 8w and strides 1, 2, 2, 2 (on both frequency and time), the
  stride in each stage's first block; the shortcut is the identity, or 1x1 conv with the stride -> BN when the
  shape changes; the block's sum goes through a ReLU.
  * BasicBlock (ResNet34, [3, 4, 6, 3]): conv1 3x3 (carries the stride) -> bn1 -> ReLU -> conv2 3x3 -> bn2;
  * Bottleneck (ResNet221 [6, 16, 48, 3], ResNet293 [10, 20, 64, 3]; He et al. 2016, "Deep Residual Learning
    for Image Recognition", the stride on the 3x3 as WeSpeaker places it): conv1 1x1 -> bn1 -> ReLU -> conv2
    3x3 (carries the stride) -> bn2 -> ReLU -> conv3 1x1 to 4x the width -> bn3;
- temporal statistics pooling (TSTP, `tstp`): the (channels x frequency) map is flattened per frame, and its
  mean and standard deviation over time (unbiased variance + 1e-7 under the root) are concatenated;
- seg_1: Linear(2 * C * F' -> embed_dim), C the last stage's output channels (8w, or 32w with Bottlenecks),
  F' = in_dim after three stride-2 halvings (ceil).

Parameter names follow WeSpeaker's (`conv1`, `bn1`, `layer{1-4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3],
shortcut.0, shortcut.1}`, `seg_1`), and so does the input orientation (frequency on the image's height). At
in_dim 80, base_width 32, embed_dim 256 (WeSpeaker's VoxCeleb configs, one embedding layer): ResNet34 has
6,634,336 parameters (WeSpeaker: 6.63 M), ResNet221 23,792,224 (23.79 M) and ResNet293 28,626,016 (28.62 M).
(WeSpeaker's older tables, 6.70 / 23.86 / 28.69 M, count a second 256 x 256 embedding layer.)

Variable lengths: with `lengths` (valid frames per item) the padded time steps are zeroed after every
ReLU that feeds a 3x3 conv and at every block output (a Bottleneck's conv1 output at its input's
resolution); each stride-2 stage maps a length L to ceil(L / 2), exactly the length of the unpadded item's
map (3x3 convs with padding 1, 1x1 convs with stride 2). The pooling statistics are masked, so a padded batch
in eval mode equals per-item runs up to float rounding. The variance divisor is max(T' - 1, 1), so a 1-step
map gives std sqrt(1e-7) instead of NaN.

Inference: `avtk.models.fold.fold_batchnorms` gives a copy with every BN folded into the conv before it
(the same forward with fewer passes; bench/extract.py measures it).
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


def checked_lengths(name, x, in_dim, lengths):
    """(x, lengths or None) of a (batch, in_dim, frames) input: AvtkError naming the network for another
    shape or bad lengths; lengths None when no item is padded, else a long tensor on x's device."""
    if x.dim() != 3 or x.shape[1] != in_dim:
        raise AvtkError(f"{name} expects features (batch, {in_dim}, frames), got {tuple(x.shape)}")
    if lengths is None:
        return x, None
    frames = x.shape[-1]
    lengths = check_lengths(lengths, frames, x.shape[0])
    if lengths.device != x.device:  # conditional: .to(device) would record the device in a trace
        lengths = lengths.to(x.device)
    return x, (lengths if bool((lengths < frames).any()) else None)


def tstp(h, mask=None, lengths=None):
    """Temporal statistics pooling of h (B, C, T): (B, 2C) = [mean, sqrt(unbiased variance + 1e-7)] over time.

    mask (B, 1, T) and lengths (B,): the valid frames (both None: all); h must be zero where mask is 0. The
    divisor of the variance is max(T - 1, 1). WeSpeaker's TSTP (its pooling_layers.py) is this without lengths.
    The statistics are float32 whatever the autocast (a bf16 sum over frames loses the variance).
    """
    h = h.float()
    if mask is None:
        count = h.shape[-1]
        mean = h.mean(dim=-1)
        var = ((h - mean[..., None]) ** 2).sum(dim=-1) / max(count - 1, 1)
    else:
        count = lengths.to(h.dtype)[:, None]
        mean = h.sum(dim=-1) / count
        dev = (h - mean[..., None]) * mask
        var = (dev * dev).sum(dim=-1) / (count - 1).clamp(min=1)
    return torch.cat([mean, (var + 1e-7).sqrt()], dim=1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x, mask=None, in_mask=None):
        """x is zero on padded steps; mask is at this block's output time resolution, in_mask at the input's
        (unused here: conv1 reads x itself)."""
        out = _zero_pad(F.relu(self.bn1(self.conv1(x))), mask)
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return _zero_pad(F.relu(out), mask)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x, mask=None, in_mask=None):
        """x is zero on padded steps; mask is at this block's output time resolution, in_mask at the input's
        (conv1's output, at the input's resolution, feeds the 3x3 conv2, so its padding is zeroed first)."""
        out = _zero_pad(F.relu(self.bn1(self.conv1(x))), in_mask)
        out = _zero_pad(F.relu(self.bn2(self.conv2(out))), mask)
        out = self.bn3(self.conv3(out)) + self.shortcut(x)
        return _zero_pad(F.relu(out), mask)


def block_pairs(name, block):
    """The (conv, BN) submodule names of a BasicBlock or Bottleneck named `name` (for fold_batchnorms)."""
    pairs = [(f"{name}.conv{k}", f"{name}.bn{k}") for k in (1, 2, 3) if hasattr(block, f"conv{k}")]
    if len(block.shortcut):
        pairs.append((f"{name}.shortcut.0", f"{name}.shortcut.1"))
    return pairs


def _shortcut(in_planes, planes, stride):
    if stride == 1 and in_planes == planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(planes))


class _ResNet(nn.Module):
    """A ResNet speaker encoder; `forward(x, lengths=None)` with x (B, in_dim, T) -> (B, embed_dim).
    Subclasses set `block` and `blocks` (blocks per stage)."""

    block = BasicBlock
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
                layer.append(self.block(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * self.block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            freq = -(-freq // stride)
        self.stats_dim = in_planes * freq
        self.seg_1 = nn.Linear(2 * self.stats_dim, embed_dim)

    def forward(self, x, lengths=None):
        x, lengths = checked_lengths(type(self).__name__, x, self.in_dim, lengths)
        mask = None
        x = x.unsqueeze(1)
        if lengths is not None:
            mask = _time_mask(lengths, x[:, 0, 0], x.dtype)
            x = x * mask
        x = _zero_pad(F.relu(self.bn1(self.conv1(x))), mask)
        for i, stride in enumerate(self.strides, 1):
            for j, block in enumerate(getattr(self, f"layer{i}")):
                in_mask = mask
                if lengths is not None and j == 0 and stride != 1:
                    lengths = (lengths + stride - 1) // stride
                    mask = _time_mask(lengths, x[:, 0, 0, ::stride], x.dtype)  # ceil(T / stride) frames
                x = block(x, mask, in_mask)
        h = x.flatten(1, 2)  # (B, C * F', T')
        stats = tstp(h) if mask is None else tstp(h, mask[:, 0], lengths)
        return self.seg_1(stats)

    def conv_bn_pairs(self):
        """(conv, BN) submodule names whose BN directly follows the conv (avtk.models.fold.fold_batchnorms)."""
        pairs = [("conv1", "bn1")]
        for i in range(1, len(self.blocks) + 1):
            for j, block in enumerate(getattr(self, f"layer{i}")):
                pairs += block_pairs(f"layer{i}.{j}", block)
        return pairs


class ResNet34(_ResNet):
    """ResNet34: BasicBlocks [3, 4, 6, 3]."""


class ResNet221(_ResNet):
    """ResNet221: Bottleneck blocks [6, 16, 48, 3]."""

    block = Bottleneck
    blocks = (6, 16, 48, 3)


class ResNet293(_ResNet):
    """ResNet293: Bottleneck blocks [10, 20, 64, 3]."""

    block = Bottleneck
    blocks = (10, 20, 64, 3)
