"""ERes2NetV2 speaker encoder (Chen et al., Interspeech 2024, "ERes2NetV2: Boosting Short-Duration Speaker
Verification Performance with Computational Efficiency"), laid out as 3D-Speaker configures it for VoxCeleb
(egs/voxceleb/sv-eres2netv2: m_channels 64, baseWidth 26, scale 2, expansion 2, blocks [3, 4, 6, 3], TSTP,
192-dim embedding, 80 fbank bins).

Input: features (batch, in_dim, frames), treated as a one-channel image (batch, 1, in_dim, frames), frequency on
the height; output: (batch, embed_dim) embeddings.

- stem: conv1 3x3 (1 -> w, no bias) -> bn1 -> ReLU (w = base_width, 3D-Speaker's m_channels);
- layer1..layer4: ERes2NetV2 blocks on planes w, 2w, 4w, 8w with strides 1, 2, 2, 2 (frequency and time), the
  stride in each stage's first block. A block on `planes` (the "width and depth expansion" of the paper: each
  branch is wider than Res2Net's and the block has only `scale` branches, its output expansion x planes):
  * conv1 1x1 (carries the stride) to scale x b channels -> bn1 -> clipped ReLU, b = floor(planes x
    branch_width / 64) (3D-Speaker's baseWidth); the result is split into `scale` groups of b channels;
  * branch i: a 3x3 conv (b -> b, no bias) -> BN -> clipped ReLU on the first group (i = 0), or on the
    previous branch's output joined with group i: their sum in layer1 and layer2, their local attentional
    feature fusion (AFF, below) in layer3 and layer4 (the "local feature fusion" of ERes2Net);
  * the branches' outputs concatenated -> conv3 1x1 to expansion x planes -> bn3, plus the shortcut (identity,
    or 1x1 conv with the stride -> BN when the shape changes) -> clipped ReLU;
  the clipped ReLU is min(max(x, 0), 20) (3D-Speaker's ReLU inside the blocks; the stem's is plain);
- global feature fusion: layer3's output, through `layer3_ds` (3x3 conv with stride 2, 4w x e -> 8w x e, no bias
  and no BN), is fused with layer4's output by AFF (`fuse34`);
- AFF(x, y) on C channels (Chen et al., Interspeech 2023, "An Enhanced Res2Net with Local and Global Feature
  Fusion for Speaker Verification"): a = 1 + tanh(local_att([x; y])), local_att = 1x1 conv (2C -> C // 4, with
  bias) -> BN -> SiLU -> 1x1 conv (C // 4 -> C, with bias) -> BN; the fusion is x * a + y * (2 - a);
- temporal statistics pooling of the fused map (resnet.tstp: the (channels x frequency) map flattened per frame,
  mean and standard deviation over time; 3D-Speaker adds 1e-8 under the root, this 1e-7 as the other encoders);
- seg_1: Linear(2 * C * F' -> embed_dim), C = 8w x expansion, F' = in_dim after three ceil halvings.

Parameters at in_dim 80 with 3D-Speaker's VoxCeleb configuration (base_width 64, branch_width 26, scale 2,
expansion 2, embed_dim 192): 17,859,632, the embedding network alone (its classifier not counted), as
3D-Speaker's own count (17.86 M; the paper's and the VoxCeleb table's 17.8 M). Parameter names follow
3D-Speaker's (`conv1`, `bn1`, `layer{1-4}.{i}.{conv1,bn1,convs.k,bns.k,conv3,bn3,shortcut.0,shortcut.1}`,
`layer{3,4}.{i}.fuse_models.k.local_att.{0,1,3,4}`, `layer3_ds`, `fuse34.local_att.*`, `seg_1`).

Variable lengths, as the other encoders (`forward(x, lengths)`): the padded time steps are zeroed after every
activation that reaches a 3x3 conv or the pooling (a block's conv1 output and every branch but the last, the
block outputs, the fused map); each stride-2 stage and layer3_ds map a length L to ceil(L / 2), exactly the
unpadded item's (1x1 convs with stride 2 read frames 0, 2, 4, ...; the 3x3 one has padding 1). AFF and the 1x1
convs act per step. In eval mode a padded batch equals per-item runs up to float rounding.

Inference: `avtk.models.fold.fold_batchnorms` gives a copy with every BN folded into the conv before it (all of
them here: the stem, each block's conv1, branch convs, conv3 and shortcut, and both convs of every AFF).
"""
import torch
import torch.nn.functional as F
from torch import nn

from avtk.errors import AvtkError
from avtk.models.resnet import _shortcut, _time_mask, _zero_pad, checked_lengths, tstp

CLIP = 20.0  # the blocks' clipped ReLU: min(max(x, 0), CLIP)
STRIDES = (1, 2, 2, 2)
FUSED_STAGES = (3, 4)  # stages whose branches are joined by AFF rather than summed


def _clipped_relu(x):
    return F.hardtanh(x, 0.0, CLIP)


class Aff(nn.Module):
    """Attentional feature fusion of two (B, C, F, T) maps: x * a + y * (2 - a), a = 1 + tanh(local_att([x; y]))."""

    def __init__(self, channels, reduction=4):
        super().__init__()
        inner = channels // reduction
        self.local_att = nn.Sequential(nn.Conv2d(2 * channels, inner, kernel_size=1), nn.BatchNorm2d(inner),
                                       nn.SiLU(), nn.Conv2d(inner, channels, kernel_size=1), nn.BatchNorm2d(channels))

    def forward(self, x, y):
        a = 1.0 + torch.tanh(self.local_att(torch.cat([x, y], dim=1)))
        return x * a + y * (2.0 - a)

    def conv_bn_pairs(self, name):
        return [(f"{name}.local_att.0", f"{name}.local_att.1"), (f"{name}.local_att.3", f"{name}.local_att.4")]


class ERes2NetV2Block(nn.Module):
    """One block: 1x1 conv (stride) -> `scale` cascaded 3x3 branches of `branch` channels (summed, or AFF-fused
    when `fuse`) -> 1x1 conv to out_planes, plus the shortcut; clipped ReLUs."""

    def __init__(self, in_planes, out_planes, branch, scale, stride=1, fuse=False):
        super().__init__()
        self.branch = branch
        self.conv1 = nn.Conv2d(in_planes, branch * scale, kernel_size=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(branch * scale)
        self.convs = nn.ModuleList(nn.Conv2d(branch, branch, kernel_size=3, padding=1, bias=False)
                                   for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(branch) for _ in range(scale))
        if fuse:
            self.fuse_models = nn.ModuleList(Aff(branch) for _ in range(scale - 1))
        self.conv3 = nn.Conv2d(branch * scale, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x, mask=None):
        """x is zero on padded steps; mask (B, 1, 1, T') at this block's output time resolution (None: no
        padding)."""
        groups = _zero_pad(_clipped_relu(self.bn1(self.conv1(x))), mask).split(self.branch, dim=1)
        fuse = getattr(self, "fuse_models", None)
        outs = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            if i == 0:
                h = groups[0]
            else:
                h = fuse[i - 1](h, groups[i]) if fuse is not None else h + groups[i]
            h = _clipped_relu(bn(conv(h)))
            if i < len(self.convs) - 1:  # the last branch feeds only conv3 (1x1)
                h = _zero_pad(h, mask)
            outs.append(h)
        out = self.bn3(self.conv3(torch.cat(outs, dim=1))) + self.shortcut(x)
        return _zero_pad(_clipped_relu(out), mask)

    def conv_bn_pairs(self, name):
        pairs = [(f"{name}.conv1", f"{name}.bn1"), (f"{name}.conv3", f"{name}.bn3")]
        pairs += [(f"{name}.convs.{k}", f"{name}.bns.{k}") for k in range(len(self.convs))]
        for k, aff in enumerate(getattr(self, "fuse_models", ())):
            pairs += aff.conv_bn_pairs(f"{name}.fuse_models.{k}")
        if len(self.shortcut):
            pairs.append((f"{name}.shortcut.0", f"{name}.shortcut.1"))
        return pairs


class ERes2NetV2(nn.Module):
    """ERes2NetV2; `forward(x, lengths=None)` with x (B, in_dim, T) -> (B, embed_dim)."""

    blocks = (3, 4, 6, 3)

    def __init__(self, in_dim=80, embed_dim=192, base_width=64, branch_width=26, scale=2, expansion=2):
        super().__init__()
        branches = [base_width * 2 ** i * branch_width // 64 for i in range(len(self.blocks))]
        if min(branches) < 1:
            raise AvtkError(f"ERes2NetV2 needs base_width x branch_width >= 64 (branches of at least one "
                            f"channel), got {base_width} x {branch_width}")
        # then layer3's branches have >= 4 channels and layer4's >= 8: AFF's C // 4 is never 0
        self.in_dim, self.embed_dim = in_dim, embed_dim
        self.conv1 = nn.Conv2d(1, base_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        in_planes, freq = base_width, in_dim
        for i, (n, stride, branch) in enumerate(zip(self.blocks, STRIDES, branches), 1):
            out_planes = base_width * 2 ** (i - 1) * expansion
            layer = []
            for j in range(n):
                layer.append(ERes2NetV2Block(in_planes, out_planes, branch, scale, stride if j == 0 else 1,
                                             fuse=i in FUSED_STAGES))
                in_planes = out_planes
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            freq = -(-freq // stride)
        layer3_planes = base_width * 4 * expansion
        self.layer3_ds = nn.Conv2d(layer3_planes, in_planes, kernel_size=3, stride=2, padding=1, bias=False)
        self.fuse34 = Aff(in_planes)
        self.stats_dim = in_planes * freq
        self.seg_1 = nn.Linear(2 * self.stats_dim, embed_dim)

    def forward(self, x, lengths=None):
        x, lengths = checked_lengths("ERes2NetV2", x, self.in_dim, lengths)
        mask = None
        x = x.unsqueeze(1)
        if lengths is not None:
            mask = _time_mask(lengths, x[:, 0, 0], x.dtype)
            x = x * mask
        x = _zero_pad(F.relu(self.bn1(self.conv1(x))), mask)
        for i, stride in enumerate(STRIDES, 1):
            if i == 4:
                out3 = x
            if lengths is not None and stride != 1:
                lengths = (lengths + stride - 1) // stride
                mask = _time_mask(lengths, x[:, 0, 0, ::stride], x.dtype)  # ceil(T / stride) frames
            for block in getattr(self, f"layer{i}"):
                x = block(x, mask)
        x = _zero_pad(self.fuse34(x, self.layer3_ds(out3)), mask)
        h = x.flatten(1, 2)  # (B, C * F', T')
        stats = tstp(h) if mask is None else tstp(h, mask[:, 0], lengths)
        return self.seg_1(stats)

    def conv_bn_pairs(self):
        """(conv, BN) submodule names whose BN directly follows the conv (avtk.models.fold.fold_batchnorms)."""
        pairs = [("conv1", "bn1")]
        for i in range(1, len(self.blocks) + 1):
            for j, block in enumerate(getattr(self, f"layer{i}")):
                pairs += block.conv_bn_pairs(f"layer{i}.{j}")
        return pairs + self.fuse34.conv_bn_pairs("fuse34")
