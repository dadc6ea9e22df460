"""A face network: pixel normalisation and channel order, then an image encoder (iresnet).

Images arrive as RGB uint8 (batch, H, W, 3), the way avtk.face.frames decodes them. `channels: bgr` feeds the
encoder BGR instead, for networks trained that way (the seed's V-Vox2); insightface's models take RGB.
"""
from torch import nn

from avtk.errors import AvtkError
from avtk.models import build_encoder


class FaceNet(nn.Module):
    modality = "face"

    def __init__(self, encoder="iresnet18", encoder_args=None, channels="rgb"):
        super().__init__()
        if channels not in ("rgb", "bgr"):
            raise AvtkError(f"model.channels is {channels!r}; choose rgb or bgr")
        self.encoder = build_encoder(encoder, **(encoder_args or {}))
        self.channels = channels

    @classmethod
    def from_config(cls, model_cfg):
        return cls(model_cfg["encoder"], model_cfg["encoder_args"], model_cfg["channels"])

    @property
    def input_size(self):
        return self.encoder.input_size

    def normalize(self, images):
        """uint8 RGB (batch, H, W, 3) -> float (batch, 3, H, W) in [-1, 1], in the encoder's channel order."""
        # contiguous: a channels-last input makes this torch's CPU backward crash (segfault in torch 2.13)
        x = images.permute(0, 3, 1, 2).float().contiguous()
        if self.channels == "bgr":
            x = x.flip(1)
        return (x / 255.0 - 0.5) / 0.5

    def encode(self, x):
        return self.encoder(x)

    def forward(self, images):
        """uint8 RGB images (batch, H, W, 3) -> embeddings (batch, embed_dim)."""
        return self.encode(self.normalize(images))

