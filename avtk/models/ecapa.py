"""ECAPA-TDNN speaker encoder ("ECAPA-L" at channels=1024), laid out like the seed's checkpoints.

Input: features (batch, in_dim, frames); output: (batch, embed_dim) embeddings (the output of `bn6`).

Architecture (REFERENCE §1): conv1 k5 -> ReLU -> BN; three Res2Net bottleneck blocks (k3, dilations 2, 3, 4,
scale 8) with squeeze-excitation (128-channel bottleneck, no BN) and dense inputs x1 = L1(x),
x2 = L2(x + x1), x3 = L3(x + x1 + x2); layer4 = Conv1d(3C -> 1536, 1) + ReLU on cat(x1, x2, x3);
attentive statistics pooling with global context; head BN(3072) -> Linear(3072 -> 192) -> BN(192).
Parameters: 15,444,544 at C=1024 and 6,978,176 at C=512 (in_dim 80, embed_dim 192).

Checkpoint mapping (the seed's flat state_dicts, no module prefix):

=====================================================  ==========================================
seed key                                               avtk
=====================================================  ==========================================
``conv1.*``, ``bn1.*``                                 ``EcapaTdnn`` key of the same name
``layer{1,2,3}.{conv1,bn1,convs.0-6,bns.0-6,conv3,     same name (identity)
bn3}.*``, ``layer{1,2,3}.se.se.{1,3}.*``
``layer4.*``, ``attention.{0,2,4}.*``                  same name (identity)
``bn5.*``, ``fc6.*``, ``bn6.*``                        same name (identity)
``torchfbank.{0.flipped_filter,1.spectrogram.window,   not encoder state: the front end (pre-emphasis,
1.mel_scale.fb}``                                      mel filterbank) is rebuilt by ``avtk.features``
``weight`` [n_spk, 192] (A-Vox2.model)                 ``AamSoftmax.weight`` (avtk.models.losses)
``speaker_encoder.<key>`` (ECAPA-TDNN pretrain.model)  ``<key>`` as above (strip the prefix)
``speaker_loss.weight``                                ``AamSoftmax.weight``
=====================================================  ==========================================

So the encoder holds 231 state_dict entries at any C (the seed's "234 keys" count the 3 front-end buffers);
`split_seed_state_dict` sorts a seed state_dict into encoder, loss and front-end parts.

Variable lengths: ``forward(x, lengths)`` treats every item exactly as if it were run alone on its first
``lengths[i]`` frames. All convolutions use zero "same" padding, so re-zeroing the padded tail after every
conv/ReLU/BN reproduces the unpadded computation; the SE means and the pooling statistics are masked means
(unbiased masked variance), and the attention softmax runs over the valid frames only. In eval mode a padded
batch therefore equals per-item runs up to float rounding. (In training mode BatchNorm's batch statistics
include the zeroed padding, as any batch composition changes them.) Without ``lengths`` the network takes the
plain path with no masking.

The variance's divisor is max(T - 1, 1), so a 1-frame input gives variance 0 (clamped to 1e-4) instead of
the NaN of ``torch.var``; at T >= 2 this is the seed's unbiased variance.
"""
import torch
from torch import nn

from avtk.errors import AvtkError

#: Prefix of the seed's front-end buffers in its checkpoints; they belong to the front end, not the encoder.
SEED_FRONTEND_PREFIX = "torchfbank."


def length_mask(lengths, frames, dtype):
    """(batch, 1, frames) mask: 1 on the first lengths[i] frames of item i, 0 on the padding."""
    steps = torch.arange(frames, device=lengths.device)
    return (steps[None, :] < lengths[:, None]).to(dtype).unsqueeze(1)


def check_lengths(lengths, frames, batch):
    """Validate `lengths` against a (batch, ..., frames) input; returns them as a long tensor."""
    lengths = torch.as_tensor(lengths).long()
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise AvtkError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > frames).any()):
        raise AvtkError(f"lengths must lie in [1, {frames}] (the padded number of frames), "
                        f"got min {int(lengths.min())} and max {int(lengths.max())}")
    return lengths


def masked_mean_std(h, mask, count, eps):
    """Mean and sqrt(clamp(unbiased variance, eps)) over the last axis of h (B, C, T), keeping that axis.

    mask is (B, 1, T) or None (all frames valid); count is (B, 1, 1) valid frames, or the int T.
    h must already be zero where mask is 0.
    """
    mean = h.sum(dim=-1, keepdim=True) / count
    dev = h - mean
    if mask is not None:
        dev = dev * mask
    if isinstance(count, int):
        denom = max(count - 1, 1)
    else:
        denom = (count - 1).clamp(min=1)
    var = (dev * dev).sum(dim=-1, keepdim=True) / denom
    return mean, var.clamp(min=eps).sqrt()


def _zero_pad(x, mask):
    return x if mask is None else x * mask


class SqueezeExcite(nn.Module):
    """Mean over time -> 1x1 conv C -> bottleneck -> ReLU -> 1x1 conv -> C -> sigmoid; scales the input.

    The layers sit in `self.se` at indices 1 and 3 (index 0 is the seed's time pooling, which here is a
    masked mean), giving the seed's keys `se.se.1.*` and `se.se.3.*`.
    """

    def __init__(self, channels, bottleneck=128):
        super().__init__()
        self.se = nn.Sequential(
            nn.Identity(),
            nn.Conv1d(channels, bottleneck, kernel_size=1),
            nn.ReLU(),
            nn.Conv1d(bottleneck, channels, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x, mask=None, count=None):
        if mask is None:
            s = x.mean(dim=-1, keepdim=True)
        else:
            s = x.sum(dim=-1, keepdim=True) / count
        for layer in list(self.se)[1:]:
            s = layer(s)
        return x * s


class Res2Block(nn.Module):
    """SE-Res2Net bottleneck: 1x1 conv, hierarchical dilated k-convs over `scale` splits, 1x1 conv, SE, residual.

    Every conv is followed by ReLU then BN, as in the seed.
    """

    def __init__(self, channels, kernel_size=3, dilation=1, scale=8, se_bottleneck=128):
        super().__init__()
        if channels % scale:
            raise AvtkError(f"ECAPA channels ({channels}) must be a multiple of the Res2Net scale ({scale})")
        width = channels // scale
        self.width, self.nums = width, scale - 1
        self.conv1 = nn.Conv1d(channels, width * scale, kernel_size=1)
        self.bn1 = nn.BatchNorm1d(width * scale)
        pad = (kernel_size // 2) * dilation
        self.convs = nn.ModuleList(
            nn.Conv1d(width, width, kernel_size=kernel_size, dilation=dilation, padding=pad)
            for _ in range(self.nums)
        )
        self.bns = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(self.nums))
        self.conv3 = nn.Conv1d(width * scale, channels, kernel_size=1)
        self.bn3 = nn.BatchNorm1d(channels)
        self.relu = nn.ReLU()
        self.se = SqueezeExcite(channels, se_bottleneck)

    def forward(self, x, mask=None, count=None):
        out = _zero_pad(self.bn1(self.relu(self.conv1(x))), mask)
        splits = torch.split(out, self.width, dim=1)
        pieces = []
        sp = None
        for i in range(self.nums):
            sp = splits[i] if i == 0 else sp + splits[i]
            sp = _zero_pad(self.bns[i](self.relu(self.convs[i](sp))), mask)
            pieces.append(sp)
        pieces.append(splits[self.nums])
        out = torch.cat(pieces, dim=1)
        out = _zero_pad(self.bn3(self.relu(self.conv3(out))), mask)
        out = self.se(out, mask, count)
        return out + x


class EcapaTdnn(nn.Module):
    """ECAPA-TDNN; `forward(x, lengths=None)` with x (B, in_dim, T) -> (B, embed_dim)."""

    def __init__(self, in_dim=80, channels=1024, embed_dim=192, pooled=1536, attention=256):
        super().__init__()
        # pooled (layer4's output) and attention are 1536 and 256 in the seed; small models may shrink them.
        self.in_dim, self.channels, self.embed_dim = in_dim, channels, embed_dim
        self.conv1 = nn.Conv1d(in_dim, channels, kernel_size=5, stride=1, padding=2)
        self.relu = nn.ReLU()
        self.bn1 = nn.BatchNorm1d(channels)
        self.layer1 = Res2Block(channels, kernel_size=3, dilation=2, scale=8)
        self.layer2 = Res2Block(channels, kernel_size=3, dilation=3, scale=8)
        self.layer3 = Res2Block(channels, kernel_size=3, dilation=4, scale=8)
        self.layer4 = nn.Conv1d(3 * channels, pooled, kernel_size=1)
        # The seed's attention Sequential ends with a Softmax (index 5, no parameters); here the softmax is
        # applied in `_pool`, masked to the valid frames.
        self.attention = nn.Sequential(
            nn.Conv1d(pooled * 3, attention, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(attention),
            nn.Tanh(),
            nn.Conv1d(attention, pooled, kernel_size=1),
        )
        self.bn5 = nn.BatchNorm1d(pooled * 2)
        self.fc6 = nn.Linear(pooled * 2, embed_dim)
        self.bn6 = nn.BatchNorm1d(embed_dim)

    def _pool(self, h, mask, count):
        mean, std = masked_mean_std(h, mask, count, 1e-4)
        frames = h.shape[-1]
        context = torch.cat([h, mean.expand(-1, -1, frames), std.expand(-1, -1, frames)], dim=1)
        scores = self.attention(context)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        w = torch.softmax(scores, dim=-1)
        mu = (h * w).sum(dim=-1)
        sg = ((h * h * w).sum(dim=-1) - mu * mu).clamp(min=1e-4).sqrt()
        return torch.cat([mu, sg], dim=1)

    def forward(self, x, lengths=None):
        if x.dim() != 3 or x.shape[1] != self.in_dim:
            raise AvtkError(f"ECAPA-TDNN expects features (batch, {self.in_dim}, frames), got {tuple(x.shape)}")
        frames = x.shape[-1]
        mask, count = None, frames
        if lengths is not None:
            lengths = check_lengths(lengths, frames, x.shape[0]).to(x.device)
            if bool((lengths < frames).any()):
                mask = length_mask(lengths, frames, x.dtype)
                count = lengths.to(x.dtype).view(-1, 1, 1)
                x = x * mask
        x = _zero_pad(self.bn1(self.relu(self.conv1(x))), mask)
        x1 = self.layer1(x, mask, count)
        x2 = self.layer2(x + x1, mask, count)
        x3 = self.layer3(x + x1 + x2, mask, count)
        h = _zero_pad(self.relu(self.layer4(torch.cat([x1, x2, x3], dim=1))), mask)
        stats = self._pool(h, mask, count)
        return self.bn6(self.fc6(self.bn5(stats)))


def split_seed_state_dict(state):
    """Sort a seed checkpoint (A-Vox2.model, or ECAPA-TDNN pretrain.model) into (encoder, loss, frontend) dicts.

    `speaker_encoder.` prefixes are stripped; `weight` / `speaker_loss.weight` go to the loss as `weight`;
    `torchfbank.*` buffers go to the front-end dict; everything else is encoder state, with the same names.
    """
    encoder, loss, frontend = {}, {}, {}
    for key, value in state.items():
        name = key[len("speaker_encoder."):] if key.startswith("speaker_encoder.") else key
        if name in ("weight", "speaker_loss.weight"):
            loss["weight"] = value
        elif name.startswith(SEED_FRONTEND_PREFIX):
            frontend[name] = value
        else:
            encoder[name] = value
    return encoder, loss, frontend
