"""insightface's "iresnet" face encoder (ArcFace backbones r18/r34/r50/r100), with insightface's module names.

Input: normalised RGB (or BGR, see avtk.models.face_net) images (batch, 3, H, W), H = W = 112 by default;
output: (batch, embed_dim) embeddings.

- stem: conv1 3x3 (3 -> w, stride 1, no bias) -> bn1 -> prelu;
- layer1..layer4 of IBasicBlocks with widths w, 2w, 4w, 8w; the first block of every stage has stride 2 and a
  downsample = [1x1 conv (no bias, the stride), BN]; blocks per stage: r18 [2,2,2,2], r34 [3,4,6,3],
  r50 [3,4,14,3], r100 [3,13,30,3];
- IBasicBlock: bn1 -> conv1 3x3 -> bn2 -> prelu -> conv2 3x3 (the stride) -> bn3, plus the shortcut, with no
  activation after the sum;
- head: bn2 (BN2d 8w) -> flatten -> dropout -> fc Linear(8w * (H/16)^2 -> embed_dim) -> features (BN1d, its
  weight fixed at 1 and not trained). The output of `features` is the embedding.

At w = 64, 112x112 and embed_dim 512 there are 24,025,600 parameters for r18 and 43,590,848 for r50 (the
frozen `features.weight` included), and a state_dict in insightface's `backbone.pth` layout loads with no key
mapping. `width` and `input_size` only exist to make small networks for CPU tests and the mini recipe.

`fuse_for_inference(model)` gives an equivalent module for extraction only (see its docstring): the BatchNorms
folded into the convolutions and the head, channels-last activations, small CPU batches; embeddings within
1e-4 of the model's, 1.2-1.5x faster on CPU (bench/face_extract.py).
"""
import copy

import torch
from torch import nn

from avtk.errors import AvtkError
from avtk.models.fold import bn_affine

def check_image_size(x, size):
    if x.shape[-2:] != (size, size):
        raise AvtkError(f"iresnet expects {size}x{size} images, got {x.shape[-2]}x{x.shape[-1]}")


DEPTHS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 14, 3], 100: [3, 13, 30, 3]}


def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    modality = "face"

    def __init__(self, depth=18, embed_dim=512, width=64, input_size=112, dropout=0.0):
        super().__init__()
        if depth not in DEPTHS:
            raise AvtkError(f"iresnet depth {depth} is not one of {', '.join(map(str, DEPTHS))}")
        if input_size % 16:
            raise AvtkError(f"iresnet input_size {input_size} is not a multiple of 16")
        self.embed_dim, self.input_size = embed_dim, input_size
        self.conv1 = _conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        inplanes = width
        for i, blocks in enumerate(DEPTHS[depth], 1):
            planes = width * 2 ** (i - 1)
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=2, bias=False),
                                       nn.BatchNorm2d(planes, eps=1e-5))
            layers = [IBasicBlock(inplanes, planes, 2, downsample)]
            layers += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(inplanes * (input_size // 16) ** 2, embed_dim)
        self.features = nn.BatchNorm1d(embed_dim, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)

    def forward(self, x):
        check_image_size(x, self.input_size)
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _conv_bn(conv, bn):
    """conv -> bn as one convolution with a bias (exact up to rounding: the BN follows the conv)."""
    scale, shift = bn_affine(bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True,
                      device=conv.weight.device)
    bias = shift if conv.bias is None else shift + scale * conv.bias.detach().double()
    fused.weight.data = (conv.weight.detach().double() * scale[:, None, None, None]).float()
    fused.bias.data = bias.float()
    return fused


class _Affine(nn.Module):
    """An eval-mode BatchNorm2d as scale * x + shift, whatever the module's train/eval mode."""

    def __init__(self, bn):
        super().__init__()
        scale, shift = bn_affine(bn)
        self.register_buffer("scale", scale.float().view(1, -1, 1, 1))
        self.register_buffer("shift", shift.float().view(1, -1, 1, 1))

    def forward(self, x):
        return torch.addcmul(self.shift, x, self.scale)


class _FusedBlock(nn.Module):
    """IBasicBlock with conv1 -> bn2, conv2 -> bn3 and the downsample conv -> BN folded. bn1 stays an affine map:
    it precedes a zero-padded conv, and folding it in would change the border pixels."""

    def __init__(self, block):
        super().__init__()
        self.bn1 = _Affine(block.bn1)
        self.conv1 = _conv_bn(block.conv1, block.bn2)
        self.prelu = copy.deepcopy(block.prelu)
        self.conv2 = _conv_bn(block.conv2, block.bn3)
        self.downsample = None if block.downsample is None else _conv_bn(block.downsample[0], block.downsample[1])

    def forward(self, x):
        out = self.conv2(self.prelu(self.conv1(self.bn1(x))))
        return out + (x if self.downsample is None else self.downsample(x))


class FusedIResNet(nn.Module):
    """An IResNet for inference only; see fuse_for_inference."""

    modality = "face"

    def __init__(self, model, channels_last=True, cpu_batch=8):
        super().__init__()
        self.embed_dim, self.input_size = model.embed_dim, model.input_size
        self.channels_last, self.cpu_batch = channels_last, cpu_batch
        self.conv1 = _conv_bn(model.conv1, model.bn1)
        self.prelu = copy.deepcopy(model.prelu)
        self.blocks = nn.Sequential(*[_FusedBlock(b) for i in range(1, 5) for b in getattr(model, f"layer{i}")])
        # Head: bn2 -> flatten -> (dropout: identity in eval) -> fc -> features, as one Linear.
        scale, shift = bn_affine(model.bn2)
        per_channel = (model.input_size // 16) ** 2  # flatten order: channel-major
        scale, shift = scale.repeat_interleave(per_channel), shift.repeat_interleave(per_channel)
        weight, bias = model.fc.weight.detach().double(), model.fc.bias.detach().double()
        bias = bias + weight @ shift
        weight = weight * scale[None, :]
        scale, shift = bn_affine(model.features)
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], device=model.fc.weight.device)
        self.fc.weight.data = (weight * scale[:, None]).float()
        self.fc.bias.data = (bias * scale + shift).float()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    def _forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.blocks(self.prelu(self.conv1(x)))
        return self.fc(torch.flatten(x, 1))

    def forward(self, x):
        check_image_size(x, self.input_size)
        if x.device.type != "cpu" or not self.cpu_batch or len(x) <= self.cpu_batch:
            return self._forward(x)
        # A batch of 32 112x112 images has 100 MB activations in layer1; 8 at a time stay nearer the caches.
        return torch.cat([self._forward(x[i:i + self.cpu_batch]) for i in range(0, len(x), self.cpu_batch)])


def fuse_for_inference(model, channels_last=True, cpu_batch=8):
    """An equivalent, faster copy of an IResNet for extraction (eval-mode statistics; `model` is not changed).

    - every BatchNorm that follows a convolution (bn2 after conv1, bn3 after conv2, the downsample's BN, the stem's
      bn1) is folded into that convolution's weights and a bias; the head's bn2 -> fc -> features into one Linear;
      each block's bn1, which precedes a zero-padded conv, becomes a per-channel scale and shift;
    - activations channels-last (oneDNN's faster layout on CPU; inference only, see avtk.models.face_net);
    - on the CPU, batches larger than `cpu_batch` go through in slices of `cpu_batch` images (0: whole batches).

    Parameters do not require grad and the module behaves the same in train() and eval() mode. Embeddings agree
    with model.eval()'s within float32 rounding (about 3e-5 for r50 with embeddings of norm 25; tested at 1e-4).
    """
    if not isinstance(model, IResNet):
        raise AvtkError(f"fuse_for_inference takes an IResNet, got {type(model).__name__}")
    return FusedIResNet(model, channels_last, cpu_batch)


def _variant(depth):
    def build(embed_dim=512, width=64, input_size=112, dropout=0.0):
        return IResNet(depth, embed_dim, width, input_size, dropout)

    build.__name__ = f"iresnet{depth}"
    build.modality = "face"
    return build


iresnet18, iresnet34, iresnet50, iresnet100 = (_variant(d) for d in (18, 34, 50, 100))
