"""CAM++ speaker encoder (Wang et al., Interspeech 2023, "CAM++: A Fast and Efficient Network for Speaker
Verification Using Context-Aware Masking", arXiv:2303.00332), laid out as the WeSpeaker and 3D-Speaker
releases configure it for VoxCeleb.

Input: features (batch, in_dim, frames); output: (batch, embed_dim) embeddings.

- `head`, the front-end convolution module (FCM): the features as a one-channel image (frequency on the
  height); conv1 3x3 (1 -> w) -> bn1 -> ReLU; layer1 and layer2, two ResNet BasicBlocks each (resnet.py), the
  first of each with stride 2 on frequency only; conv2 3x3 with stride 2 on frequency -> bn2 -> ReLU; the
  (w x F') map flattened per frame (F' = in_dim after three ceil halvings: 10 at 80 bins, so 320 channels);
- `xvector.tdnn`: Conv1d(k 5, stride 2 in time, no bias) -> BN -> ReLU to `init_channels` (128);
- three densely connected TDNN blocks of 12, 24 and 16 layers (kernel 3, dilations 1, 2, 2); each layer is
  BN -> ReLU -> 1x1 conv to bn_size x growth_rate (4 x 32) -> BN -> ReLU -> the context-aware masking layer,
  and its growth_rate outputs are appended to the block's input (so a block adds layers x growth_rate
  channels); each block is followed by a transit layer BN -> ReLU -> 1x1 conv halving the channels
  (128 -> 512 -> 256 -> 1024 -> 512 -> 1024 -> 512);
- the context-aware masking layer (CAM): y = conv_k(h) (`linear_local`, no bias), masked by
  sigmoid(W2 ReLU(W1 c + b1) + b2), where the context c of a frame is the utterance mean of h plus the mean of
  its segment of 100 frames (frames t // 100 together, the last segment shorter); W1 halves the channels;
- `xvector.out_nonlinear` BN -> ReLU; temporal statistics pooling (TSTP: mean and standard deviation over
  time, resnet.tstp); `xvector.dense` 1x1 conv (no bias) to embed_dim -> BN without affine terms;
- initialisation as the reference implementations: the D-TDNN's convs He-normal (fan in), their biases zero
  (the FCM keeps torch's default).

Parameters at in_dim 80 with the VoxCeleb configuration (base_width 32, init_channels 128, growth_rate 32,
bn_size 4): 7,176,224 at embed_dim 512 (WeSpeaker's conf/campplus.yaml; its table says 7.18 M) and 6,848,544
at embed_dim 192. Parameter names follow WeSpeaker's campplus.py (`head.conv1`, `head.layer1.0.conv1`,
`xvector.tdnn.linear`, `xvector.block1.tdnnd1.cam_layer.linear_local`, `xvector.transit1.linear`,
`xvector.dense.linear`, each BN under `<layer>.nonlinear[12].batchnorm`), so its checkpoints load unrenamed.

Variable lengths, as the other encoders (`forward(x, lengths)`): every item is computed as if alone on its
first lengths[i] frames. The FCM keeps the frame rate and zeroes the padding after each ReLU; the strided
tdnn maps L valid frames to ceil(L / 2), exactly the unpadded item's count (kernel 5, padding 2); every
activation that reaches a conv over time or a mean is zeroed on the padding; the utterance and segment means
are means over the valid frames (a segment's mean over its valid frames, as the unpadded item's shorter last
segment); the pooling is masked. 1x1 convs and BNs act per frame, so the padding they see never reaches a
valid frame. In eval mode a padded batch equals per-item runs up to float rounding.

Inference: `avtk.models.fold.fold_batchnorms` gives a copy with every conv -> BN pair folded (FCM, tdnn,
each layer's second BN, the dense layer); the pre-activation BNs (BN -> ReLU -> conv) stay.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from avtk.errors import AvtkError
from avtk.features.fbank import positions
from avtk.models.ecapa import length_mask
from avtk.models.resnet import BasicBlock, block_pairs, checked_lengths, tstp

SEGMENT_FRAMES = 100  # the CAM layer's segment length (frames at the tdnn's rate), as the paper's "segment pooling"
BLOCKS = ((12, 1), (24, 2), (16, 2))  # (layers, dilation) of the three D-TDNN blocks; kernel 3


def _zero_pad(x, mask):
    return x if mask is None else x * mask


def _bn(channels, affine=True):
    """A BN in a Sequential under the name `batchnorm` (the checkpoints' `nonlinear.batchnorm.*` keys)."""
    return nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(channels, affine=affine)))


def masked_time_mean(h, mask, count):
    """(B, C, 1) mean over time of h (B, C, T) (zero where mask is 0); count: (B, 1, 1) valid frames (mask
    not None) or unused."""
    if mask is None:
        return h.mean(dim=-1, keepdim=True)
    return h.sum(dim=-1, keepdim=True) / count


def segment_means(h, mask, frames=SEGMENT_FRAMES):
    """(B, C, T): each frame of h (B, C, T) gets the mean of its segment of `frames` frames (t // frames) over
    the segment's valid frames; the last segment is shorter when T is not a multiple. h is zero where mask
    (B, 1, T) is 0 (None: every frame valid)."""
    means = F.avg_pool1d(h, frames, frames, ceil_mode=True)  # divides by the frames inside the input
    if mask is not None:  # the fraction of valid frames of each segment divides out
        means = means / F.avg_pool1d(mask, frames, frames, ceil_mode=True).clamp_min(1.0 / frames)
    segment = torch.div(positions(h[0, 0]), frames, rounding_mode="floor")
    return means.index_select(-1, segment)


class _Fcm(nn.Module):
    """The front-end convolution module: (B, F, T) -> (B, w * F', T)."""

    def __init__(self, in_dim, width):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(BasicBlock(width, width, (2, 1)), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, width, (2, 1)), BasicBlock(width, width))
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        freq = in_dim
        for _ in range(3):
            freq = -(-freq // 2)
        self.out_channels = width * freq

    def forward(self, x, mask):
        """x (B, F, T), zero where mask (B, 1, T) is 0."""
        mask = None if mask is None else mask[:, None]  # (B, 1, 1, T)
        x = _zero_pad(F.relu(self.bn1(self.conv1(x[:, None]))), mask)
        for block in [*self.layer1, *self.layer2]:
            x = block(x, mask)
        x = F.relu(self.bn2(self.conv2(x)))
        return x.flatten(1, 2)  # the padding is zeroed by the caller's strided tdnn input mask


class _Tdnn(nn.Module):
    """Conv1d (k 5, stride 2, no bias) -> BN -> ReLU."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size=5, stride=2, padding=2, bias=False)
        self.nonlinear = _bn(out_channels)

    def forward(self, x):
        return F.relu(self.nonlinear.batchnorm(self.linear(x)))


class _CamLayer(nn.Module):
    """Context-aware masking: conv_k(h) * sigmoid(linear2(ReLU(linear1(mean(h) + segment_means(h)))))."""

    def __init__(self, channels, out_channels, dilation):
        super().__init__()
        self.linear_local = nn.Conv1d(channels, out_channels, kernel_size=3, padding=dilation, dilation=dilation,
                                      bias=False)
        self.linear1 = nn.Conv1d(channels, channels // 2, kernel_size=1)
        self.linear2 = nn.Conv1d(channels // 2, out_channels, kernel_size=1)

    def forward(self, h, mask, count):
        context = masked_time_mean(h, mask, count) + segment_means(h, mask)
        return self.linear_local(h) * torch.sigmoid(self.linear2(F.relu(self.linear1(context))))


class _DenseLayer(nn.Module):
    """BN -> ReLU -> 1x1 conv (bottleneck) -> BN -> ReLU -> CAM layer: growth_rate new channels."""

    def __init__(self, in_channels, growth_rate, bottleneck, dilation):
        super().__init__()
        self.nonlinear1 = _bn(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bottleneck, kernel_size=1, bias=False)
        self.nonlinear2 = _bn(bottleneck)
        self.cam_layer = _CamLayer(bottleneck, growth_rate, dilation)

    def forward(self, x, mask, count):
        h = self.linear1(F.relu(self.nonlinear1.batchnorm(x)))
        h = _zero_pad(F.relu(self.nonlinear2.batchnorm(h)), mask)
        return self.cam_layer(h, mask, count)


class _Transit(nn.Module):
    """BN -> ReLU -> 1x1 conv (no bias)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.nonlinear = _bn(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x):
        return self.linear(F.relu(self.nonlinear.batchnorm(x)))


class _Dense(nn.Module):
    """1x1 conv (no bias) -> BN without affine terms, on pooled statistics (B, C) -> (B, embed_dim)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size=1, bias=False)
        self.nonlinear = _bn(out_channels, affine=False)

    def forward(self, stats):
        return self.nonlinear.batchnorm(self.linear(stats[:, :, None]))[:, :, 0]


class _XVector(nn.Module):
    """The D-TDNN backbone: tdnn, block1..3 with transit1..3, out_nonlinear, dense (called by CamPlusPlus)."""

    def __init__(self, in_channels, init_channels, growth_rate, bn_size, embed_dim):
        super().__init__()
        self.tdnn = _Tdnn(in_channels, init_channels)
        channels = init_channels
        for i, (layers, dilation) in enumerate(BLOCKS, 1):
            block = OrderedDict()
            for j in range(layers):
                block[f"tdnnd{j + 1}"] = _DenseLayer(channels + j * growth_rate, growth_rate,
                                                     bn_size * growth_rate, dilation)
            setattr(self, f"block{i}", nn.Sequential(block))
            channels += layers * growth_rate
            setattr(self, f"transit{i}", _Transit(channels, channels // 2))
            channels //= 2
        self.out_nonlinear = _bn(channels)
        self.dense = _Dense(2 * channels, embed_dim)
        self.channels = channels


class CamPlusPlus(nn.Module):
    """CAM++; `forward(x, lengths=None)` with x (B, in_dim, T) -> (B, embed_dim)."""

    def __init__(self, in_dim=80, embed_dim=512, base_width=32, init_channels=128, growth_rate=32, bn_size=4):
        super().__init__()
        if bn_size * growth_rate < 2:
            raise AvtkError(f"CAM++ needs bn_size x growth_rate >= 2 (the CAM layer halves it), got "
                            f"{bn_size} x {growth_rate}")
        if init_channels < 2:
            raise AvtkError(f"CAM++ needs init_channels >= 2, got {init_channels}")
        self.in_dim, self.embed_dim = in_dim, embed_dim
        self.head = _Fcm(in_dim, base_width)
        self.xvector = _XVector(self.head.out_channels, init_channels, growth_rate, bn_size, embed_dim)
        for m in self.xvector.modules():  # the reference initialisation: He normal (fan in), zero biases
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x, lengths=None):
        x, lengths = checked_lengths("CAM++", x, self.in_dim, lengths)
        mask = count = None
        if lengths is not None:
            mask = length_mask(lengths, x[:, 0], x.dtype)
            x = x * mask
        h = self.head(x, mask)
        xv = self.xvector
        if mask is not None:
            h = h * mask
            lengths = (lengths + 1) // 2  # kernel 5, stride 2, padding 2: ceil(L / 2) frames
        h = xv.tdnn(h)
        if mask is not None:
            mask = length_mask(lengths, h[:, 0], h.dtype)
            count = lengths.to(h.dtype).view(-1, 1, 1)
            h = h * mask
        for i in range(1, len(BLOCKS) + 1):
            for layer in getattr(xv, f"block{i}"):
                h = torch.cat([h, layer(h, mask, count)], dim=1)
            h = getattr(xv, f"transit{i}")(h)
        h = _zero_pad(F.relu(xv.out_nonlinear.batchnorm(h)), mask)
        stats = tstp(h) if mask is None else tstp(h, mask, lengths)
        return xv.dense(stats)

    def conv_bn_pairs(self):
        """(conv, BN) submodule names whose BN directly follows the conv (avtk.models.fold.fold_batchnorms)."""
        pairs = [("head.conv1", "head.bn1"), ("head.conv2", "head.bn2")]
        for name, module in self.head.named_modules(prefix="head"):
            if isinstance(module, BasicBlock):
                pairs += block_pairs(name, module)
        pairs.append(("xvector.tdnn.linear", "xvector.tdnn.nonlinear.batchnorm"))
        for i in range(1, len(BLOCKS) + 1):
            for j in range(len(getattr(self.xvector, f"block{i}"))):
                layer = f"xvector.block{i}.tdnnd{j + 1}"
                pairs.append((f"{layer}.linear1", f"{layer}.nonlinear2.batchnorm"))
        pairs.append(("xvector.dense.linear", "xvector.dense.nonlinear.batchnorm"))
        return pairs

