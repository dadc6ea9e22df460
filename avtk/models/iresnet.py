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
"""
import torch
from torch import nn

from avtk.errors import AvtkError

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
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise AvtkError(f"iresnet expects {self.input_size}x{self.input_size} images, got "
                            f"{x.shape[-2]}x{x.shape[-1]}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _variant(depth):
    def build(embed_dim=512, width=64, input_size=112, dropout=0.0):
        return IResNet(depth, embed_dim, width, input_size, dropout)

    build.__name__ = f"iresnet{depth}"
    build.modality = "face"
    return build


iresnet18, iresnet34, iresnet50, iresnet100 = (_variant(d) for d in (18, 34, 50, 100))
