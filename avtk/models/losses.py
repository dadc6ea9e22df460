"""Classification losses for speaker training, and the margin schedule.

`AamSoftmax` is the additive angular margin softmax (ArcFace) of the seed: logits s * cos(theta + m) for
the target class and s * cos(theta) for the others, with the seed's (non-"easy margin") rule that where
cos(theta) <= cos(pi - m) the target logit is cos(theta) - sin(pi - m) * m, which keeps it monotonic in theta.
With `subcenters` K > 1 each class has K weight rows and its cosine is the largest of the K (sub-center
ArcFace); row k of class c is row c * K + k of `weight`.

Checkpoints: the seed's `weight` (A-Vox2.model) and `speaker_loss.weight` (ECAPA-TDNN pretrain.model) load
as `AamSoftmax.weight` (K = 1).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from avtk.errors import AvtkError


class AamSoftmax(nn.Module):
    """forward(embeddings (B, embed_dim), labels (B,)) -> (loss, accuracy).

    `loss` is the mean cross entropy of the margined, scaled logits. `accuracy` (a detached scalar tensor,
    in %) is the top-1 accuracy of the un-margined cosines, i.e. how often the nearest class centre is the
    label. (The seed measures it on the margined logits, which understates it by the margin.) `margin` is a
    plain attribute, read at every call, so a `MarginScheduler` can change it during training. The loss runs
    in float32 even under autocast.
    """

    def __init__(self, embed_dim, num_classes, margin=0.2, scale=30.0, subcenters=1, easy_margin=False):
        super().__init__()
        if embed_dim < 1 or num_classes < 1:
            raise AvtkError(f"aam_softmax needs embed_dim >= 1 and num_classes >= 1, got {embed_dim} and {num_classes}")
        if subcenters < 1:
            raise AvtkError(f"aam_softmax subcenters must be >= 1, got {subcenters}")
        if margin < 0 or scale <= 0:
            raise AvtkError(f"aam_softmax needs margin >= 0 and scale > 0, got margin {margin} and scale {scale}")
        self.embed_dim, self.num_classes, self.subcenters = embed_dim, num_classes, subcenters
        self.margin, self.scale, self.easy_margin = float(margin), float(scale), easy_margin
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, embed_dim))
        nn.init.xavier_normal_(self.weight, gain=1)

    def extra_repr(self):
        return (f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, margin={self.margin}, "
                f"scale={self.scale}, subcenters={self.subcenters}, easy_margin={self.easy_margin}")

    def cosine(self, embeddings):
        """(B, num_classes) cosines between the embeddings and each class (its best sub-centre)."""
        cos = F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))
        if self.subcenters > 1:
            cos = cos.view(-1, self.num_classes, self.subcenters).amax(dim=2)
        return cos

    def logits(self, cosine, labels):
        """Scaled logits with the margin applied to each row's label column."""
        m = self.margin
        sine = (1.0 - cosine * cosine).clamp(0, 1).sqrt()
        phi = cosine * math.cos(m) - sine * math.sin(m)  # cos(theta + m)
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            phi = torch.where(cosine > math.cos(math.pi - m), phi, cosine - math.sin(math.pi - m) * m)
        one_hot = F.one_hot(labels, self.num_classes).to(cosine.dtype)
        return self.scale * (one_hot * phi + (1.0 - one_hot) * cosine)

    def forward(self, embeddings, labels):
        labels = labels.long()
        with torch.autocast(embeddings.device.type, enabled=False):
            cos = self.cosine(embeddings)
            loss = F.cross_entropy(self.logits(cos, labels), labels)
        with torch.no_grad():
            acc = (cos.argmax(dim=1) == labels).float().mean() * 100.0
        return loss, acc


class MarginScheduler:
    """The AAM margin over training: 0 before `warmup_start_epoch`, then a linear ramp from 0 to
    `final_margin` over `warmup_epochs`, then `final_margin`. Epochs are fractional training progress
    (0.0 = start of the first epoch). With warmup_epochs 0 the margin jumps to final at the start epoch.
    """

    def __init__(self, final_margin, warmup_start_epoch=0, warmup_epochs=0):
        if final_margin < 0 or warmup_start_epoch < 0 or warmup_epochs < 0:
            raise AvtkError("margin schedule values must be >= 0, got final margin "
                            f"{final_margin}, warm-up start {warmup_start_epoch}, warm-up epochs {warmup_epochs}")
        self.final_margin = float(final_margin)
        self.start = float(warmup_start_epoch)
        self.epochs = float(warmup_epochs)

    def value(self, epoch):
        if epoch < self.start:
            return 0.0
        if self.epochs <= 0 or epoch >= self.start + self.epochs:
            return self.final_margin
        return self.final_margin * (epoch - self.start) / self.epochs

    def step(self, loss_module, epoch):
        """Set `loss_module.margin` for this point of training; returns the margin."""
        margin = self.value(epoch)
        loss_module.margin = margin
        return margin
