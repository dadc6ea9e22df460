"""A speaker network: front end (waveform -> features), mean normalisation, encoder (features -> embedding).

The front end lives inside the model, so extraction from audio, training on the fly and export compute the
same features as `avtk compute-fbank`. Features are (batch, frames, dim); `lengths` are valid frames.
"""
from torch import nn

from avtk.features import build_frontend, cmn
from avtk.models import build_encoder


class SpeakerNet(nn.Module):
    def __init__(self, encoder="ecapa_tdnn", encoder_args=None, frontend="kaldi_fbank", frontend_args=None, cmn=True):
        super().__init__()
        self.frontend = build_frontend(frontend, **(frontend_args or {}))
        self.encoder = build_encoder(encoder, **(encoder_args or {}))
        self.use_cmn = cmn

    @classmethod
    def from_config(cls, model_cfg):
        return cls(model_cfg["encoder"], model_cfg["encoder_args"], model_cfg["frontend"],
                   model_cfg["frontend_args"], model_cfg["cmn"])

    @property
    def feature_dim(self):
        return self.encoder.in_dim if hasattr(self.encoder, "in_dim") else None

    def features(self, wave, lengths=None):
        """Front end on a (batch, samples) waveform: (features, frames per item)."""
        return self.frontend(wave, lengths)

    def normalize(self, feats, lengths=None):
        return cmn(feats, lengths) if self.use_cmn else feats

    def encode(self, feats, lengths=None):
        """Embeddings of normalised (batch, frames, dim) features."""
        return self.encoder(feats.transpose(1, 2), lengths)

    def embed_features(self, feats, lengths=None):
        return self.encode(self.normalize(feats, lengths), lengths)

    def forward(self, wave, lengths=None):
        """Waveform (batch, samples) in [-1, 1] -> embeddings (batch, embed_dim)."""
        feats, frames = self.features(wave, lengths)
        return self.embed_features(feats, frames if lengths is not None else None)


class TrainModule(nn.Module):
    """The network and its classification loss in one module, so DDP synchronises both."""

    def __init__(self, net, loss):
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, feats, labels):
        return self.loss(self.net.encode(feats), labels)
