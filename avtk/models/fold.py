"""Folding eval-mode BatchNorms into neighbouring layers, for the inference copies of the networks
(avtk.models.ecapa.fuse_for_inference, avtk.models.iresnet.fuse_for_inference)."""
import torch


def bn_affine(bn):
    """(scale, shift), float64, of an eval-mode BatchNorm: bn(y) = scale * y + shift per channel."""
    scale = bn.weight.detach().double() * torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    return scale, bn.bias.detach().double() - bn.running_mean.detach().double() * scale
