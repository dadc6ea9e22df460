"""Speaker and face networks and losses, with small name -> class registries for configs.

Speech encoders take features (batch, dim, frames) and optional `lengths` (valid frames per item), face
encoders (modality "face") take normalised images (batch, 3, H, W), the audio-visual gated_fusion packed rows of
both modalities' embeddings (avtk.models.joint); both return (batch, embed_dim) embeddings; losses take (embeddings, labels) and return (loss, accuracy in %).
"""
import inspect

from avtk.errors import AvtkError
from avtk.models.campplus import CamPlusPlus
from avtk.models.ecapa import EcapaTdnn
from avtk.models.eres2net import ERes2NetV2
from avtk.models.iresnet import iresnet18, iresnet34, iresnet50, iresnet100
from avtk.models.joint import GatedFusion
from avtk.models.losses import AamSoftmax, MarginScheduler
from avtk.models.resnet import ResNet34, ResNet221, ResNet293

ENCODERS = {"ecapa_tdnn": EcapaTdnn, "resnet34": ResNet34, "resnet221": ResNet221, "resnet293": ResNet293,
            "campplus": CamPlusPlus, "iresnet18": iresnet18, "iresnet34": iresnet34, "iresnet50": iresnet50,
            "iresnet100": iresnet100, "gated_fusion": GatedFusion, "eres2netv2": ERes2NetV2}
LOSSES = {"aam_softmax": AamSoftmax}

__all__ = ["ENCODERS", "LOSSES", "EcapaTdnn", "ResNet34", "ResNet221", "ResNet293", "CamPlusPlus", "ERes2NetV2",
           "AamSoftmax", "MarginScheduler", "build_encoder", "build_loss", "build_network", "modality"]


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


def modality(encoder):
    """"face", "speech" or "audio-visual" (avtk.models.joint: over both modalities' embeddings): what an
    encoder of ENCODERS embeds."""
    if encoder not in ENCODERS:
        raise AvtkError(f"unknown encoder '{encoder}'; known: {', '.join(sorted(ENCODERS))}")
    return getattr(ENCODERS[encoder], "modality", "speech")


def build_network(model_cfg):
    """The whole network of a config's `model` section: a SpeakerNet, a FaceNet for a face encoder, or a
    JointNet for an audio-visual one."""
    if modality(model_cfg["encoder"]) == "audio-visual":
        from avtk.models.joint import JointNet

        return JointNet.from_config(model_cfg)
    if modality(model_cfg["encoder"]) == "face":
        from avtk.models.face_net import FaceNet

        return FaceNet.from_config(model_cfg)
    from avtk.models.speaker_net import SpeakerNet

    return SpeakerNet.from_config(model_cfg)
