"""A joint audio-visual embedding over frozen encoders' embeddings: gated concatenation with modality dropout.

The input of one utterance is packed in one float32 row, (audio_dim + face_dim + 1,): its speaker embedding,
its face embedding (zeros when it has none) and a face flag (1.0: a face embedding is present). Each side is
centred by the training mean (buffers set from the training data) and L2-normalised, â and f̂; a small gate
network (a hidden ReLU layer over [â, f̂, flag]) gives per-utterance weights w_a + w_f = 1, and the embedding is

    e = [sqrt(w_a) â ; sqrt(w_f) f̂],  |e| = 1,

so the cosine of two embeddings is sqrt(w_a w_a') cos(â, â') + sqrt(w_f w_f') cos(f̂, f̂'): a gate-weighted
sum of the two modalities' cosines. The gate's last layer starts at zero, so an untrained network gives equal
weights and exactly the seed's mean fusion (cos_a + cos_f) / 2. Without a face w_f = 0 and e = [â ; 0]: the
audio branch. Modality dropout (in training only) removes the face of a `face_dropout` fraction of samples
(and the audio of an `audio_dropout` fraction of those that keep their face), so one network embeds
utterances with and without a face and trains the gate for both.

Sources (ideas, not code): attention over modality embeddings for audio-visual person verification, Shon, Oh
and Glass, "Noise-tolerant audio-visual online person verification using an attention-based neural network
fusion", ICASSP 2019; modality dropout, Neverova et al., "ModDrop", IEEE TPAMI 2016.
"""
import torch
import torch.nn.functional as F
from torch import nn

from avtk.errors import AvtkError


class GatedFusion(nn.Module):
    """(batch, audio_dim + face_dim + 1) packed rows -> (batch, audio_dim + face_dim) unit-norm embeddings."""

    modality = "audio-visual"

    def __init__(self, audio_dim=192, face_dim=512, hidden=64, face_dropout=0.3, audio_dropout=0.0):
        super().__init__()
        for name, value in (("audio_dim", audio_dim), ("face_dim", face_dim), ("hidden", hidden)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AvtkError(f"gated_fusion: {name} must be an integer >= 1, not {value!r}")
        for name, value in (("face_dropout", face_dropout), ("audio_dropout", audio_dropout)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise AvtkError(f"gated_fusion: {name} must be a number in [0, 1), not {value!r}")
        self.audio_dim, self.face_dim = audio_dim, face_dim
        self.face_dropout, self.audio_dropout = float(face_dropout), float(audio_dropout)
        self.in_dim = audio_dim + face_dim + 1
        self.embed_dim = audio_dim + face_dim
        self.register_buffer("audio_mean", torch.zeros(audio_dim))
        self.register_buffer("face_mean", torch.zeros(face_dim))
        self.gate = nn.Sequential(nn.Linear(self.in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        nn.init.zeros_(self.gate[2].weight)
        nn.init.zeros_(self.gate[2].bias)

    def unpack(self, x):
        """(audio (batch, audio_dim), face (batch, face_dim), has_face (batch,) bool) of packed rows."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise AvtkError(f"gated_fusion expects (batch, {self.in_dim}) rows (audio {self.audio_dim} + face "
                            f"{self.face_dim} + flag), got {tuple(x.shape)}")
        return x[:, :self.audio_dim], x[:, self.audio_dim:-1], x[:, -1] > 0.5

    def forward(self, x, lengths=None):
        a, f, has_face = self.unpack(x)
        has_audio = torch.ones_like(has_face)
        if self.training and (self.face_dropout or self.audio_dropout):
            r = torch.rand(2, len(x), device=x.device)
            drop_face = r[0] < self.face_dropout
            has_audio = ~(has_face & ~drop_face & (r[1] < self.audio_dropout))  # of those keeping a face
            has_face = has_face & ~drop_face
        a = F.normalize(a - self.audio_mean, dim=1) * has_audio[:, None]
        f = F.normalize(f - self.face_mean, dim=1) * has_face[:, None]
        logits = self.gate(torch.cat([a, f, has_face[:, None].to(a.dtype)], 1))
        present = torch.stack([has_audio, has_face], 1)
        w = logits.masked_fill(~present, float("-inf")).softmax(1)
        # sqrt of a weight that is 0 has an infinite derivative: take it of the present ones only
        w = torch.where(present, w.clamp_min(1e-12).sqrt(), torch.zeros_like(w))
        return torch.cat([w[:, :1] * a, w[:, 1:] * f], 1)


class JointNet(nn.Module):
    """The network of a `gated_fusion` config: SpeakerNet's interface over packed embedding rows (no front end,
    no normalisation); `set_means` centres the inputs by the training data's means.

    With model.speaker_net and model.face_net (the model sections of a speaker and a face network, filled by
    `avtk train` from finetune.speaker_model and finetune.face_model) it also holds those networks as `speaker`
    and `face`, and `encode` takes their inputs: fine-tuning them through the gate (data.input: av)."""

    modality = "audio-visual"

    def __init__(self, encoder="gated_fusion", encoder_args=None, speaker_net=None, face_net=None):
        super().__init__()
        from avtk.models import build_encoder, build_network

        self.encoder = build_encoder(encoder, **(encoder_args or {}))
        self.speaker = self.face = None
        if speaker_net is not None or face_net is not None:
            if speaker_net is None or face_net is None:
                raise AvtkError("model.speaker_net and model.face_net go together (the networks fine-tuned "
                                "through gated_fusion): give both or neither")
            self.speaker, self.face = build_network(speaker_net), build_network(face_net)
            wrong = [f"model.{name}_net embeds {net.encoder.embed_dim} dimensions but model.encoder_args."
                     f"{name}_dim is {want}" for name, net, want in (("speaker", self.speaker, self.encoder.audio_dim),
                                                                     ("face", self.face, self.encoder.face_dim))
                     if net.encoder.embed_dim != want]
            if wrong:
                raise AvtkError("; ".join(wrong).replace("speaker_dim", "audio_dim"))

    @classmethod
    def from_config(cls, model_cfg):
        return cls(model_cfg["encoder"], model_cfg["encoder_args"], model_cfg.get("speaker_net"),
                   model_cfg.get("face_net"))

    @property
    def feature_dim(self):
        return self.encoder.in_dim if self.speaker is None else self.speaker.feature_dim

    @property
    def input_size(self):
        return None if self.face is None else self.face.input_size

    def set_means(self, audio_mean, face_mean):
        """Centre the inputs by these (audio_dim,) and (face_dim,) means (the training embeddings')."""
        self.encoder.audio_mean.copy_(torch.as_tensor(audio_mean, dtype=torch.float32))
        self.encoder.face_mean.copy_(torch.as_tensor(face_mean, dtype=torch.float32))

    def normalize(self, x, lengths=None):
        return x

    def rows(self, inputs):
        """Packed rows (batch, audio_dim + face_dim + 1) of the held networks' inputs (normalised speech
        features (batch, frames, dim), normalised face images (batch, K, 3, H, W), face flag (batch,)): the
        speaker embedding, the mean of the K L2-normalised face embeddings as avtk.embed.face_means makes it
        (zeros where the flag is 0: those images are not run, so batch norm never sees them) and the flag."""
        feats, images, flag = inputs
        audio = self.speaker.encode(feats)
        face = audio.new_zeros(len(flag), self.encoder.face_dim)
        present = flag > 0.5
        if present.any():
            x = images[present]
            emb = F.normalize(self.face.encode(x.flatten(0, 1)).float(), dim=1)
            face[present] = emb.view(x.shape[0], x.shape[1], -1).mean(1).to(face.dtype)
        elif self.training:  # no face in this batch: DDP still expects a gradient (zero) for every parameter
            face = face + 0.0 * sum(p.flatten()[0] for p in self.face.parameters())
        return torch.cat([audio, face, flag[:, None].to(audio.dtype)], 1)

    def encode(self, x, lengths=None):
        """Embeddings of packed rows, or (with held networks) of a tuple of their inputs (`rows`)."""
        return self.encoder(self.rows(x) if isinstance(x, tuple) else x)

    def forward(self, x):
        return self.encode(x)


def pack(audio, faces, face_dim):
    """Packed float32 rows, (n, audio_dim + face_dim + 1) with the face flag last, of (n, audio_dim) speaker
    embeddings and a list of n face embeddings, each a (face_dim,) array or None (no face)."""
    import numpy as np

    audio = np.asarray(audio, dtype=np.float32).reshape(len(faces), -1)
    rows = np.zeros((len(audio), audio.shape[1] + face_dim + 1), dtype=np.float32)
    rows[:, :audio.shape[1]] = audio
    for i, v in enumerate(faces):
        if v is not None:
            rows[i, audio.shape[1]:-1] = v
            rows[i, -1] = 1.0
    return rows
