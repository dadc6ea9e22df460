"""Speaker networks and losses, with small name -> class registries for configs.

Encoders take features (batch, dim, frames) and optional `lengths` (valid frames per item) and return
(batch, embed_dim) embeddings; losses take (embeddings, labels) and return (loss, accuracy in %).
"""
import inspect

from avtk.errors import AvtkError
from avtk.models.ecapa import EcapaTdnn
from avtk.models.losses import AamSoftmax, MarginScheduler
from avtk.models.resnet import ResNet34

ENCODERS = {"ecapa_tdnn": EcapaTdnn, "resnet34": ResNet34}
LOSSES = {"aam_softmax": AamSoftmax}

__all__ = ["ENCODERS", "LOSSES", "EcapaTdnn", "ResNet34", "AamSoftmax", "MarginScheduler",
           "build_encoder", "build_loss"]


def _build(kind, registry, name, kwargs):
    if name not in registry:
        raise AvtkError(f"unknown {kind} '{name}'; known: {', '.join(sorted(registry))}")
    cls = registry[name]
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise AvtkError(f"unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for {kind} "
                        f"'{name}'; accepted: {', '.join(accepted)}")
    return cls(**kwargs)


def build_encoder(name, **kwargs):
    """An encoder from ENCODERS by name; unknown names or arguments raise AvtkError."""
    return _build("encoder", ENCODERS, name, kwargs)


def build_loss(name, **kwargs):
    """A loss from LOSSES by name; unknown names or arguments raise AvtkError."""
    return _build("loss", LOSSES, name, kwargs)
