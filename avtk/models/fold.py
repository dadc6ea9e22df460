"""Folding eval-mode BatchNorms into neighbouring layers, for the inference copies of the networks
(avtk.models.ecapa.fuse_for_inference, avtk.models.iresnet.fuse_for_inference, and `fold_batchnorms` for the
ResNet and CAM++ speaker encoders)."""
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from avtk.errors import AvtkError


def bn_affine(bn):
    """(scale, shift), float64, of an eval-mode BatchNorm: bn(y) = scale * y + shift per channel."""
    scale = bn.weight.detach().double() * torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    return scale, bn.bias.detach().double() - bn.running_mean.detach().double() * scale


def fold_batchnorms(model, channels_last=True):
    """An inference copy of `model` (not changed) with every BN that directly follows a conv folded into it.

    `model.conv_bn_pairs()` names the (conv, BN) submodule pairs; each conv of the copy becomes
    torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn) (weights scaled by the BN's gamma / sqrt(var + eps), a bias
    beta - mean * scale added) and its BN an nn.Identity, so the copy runs the same forward (masking included)
    with one pass less per pair. channels_last: the 2-D convs' weights in torch.channels_last memory format,
    so oneDNN runs them, and their outputs, channels-last on the CPU. Together a few per cent faster than the
    eager model on the CPU (bench/extract.py --rtf; README "Speaker networks"). The BN's running
    statistics are used whatever `model`'s mode; the copy is in eval mode, without gradients, and has its own
    weights (fold again after the model's change). Embeddings agree with model.eval()'s within float32
    rounding (tests/test_fused_inference.py: 1e-4).
    """
    pairs = getattr(model, "conv_bn_pairs", None)
    if pairs is None:
        raise AvtkError(f"fold_batchnorms takes a network that names its conv -> BN pairs, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in pairs():
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        folded.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
        folded.set_submodule(bn_name, nn.Identity())
    if channels_last:
        for module in folded.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
    return folded.requires_grad_(False)
