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

Extraction: `fuse_for_inference(model)` gives an equivalent module for inference only (see its docstring): BN
scales folded into the convolutions, in-place activations, the attention's time-constant context as a bias;
embeddings within 1e-4 of the model's (tests/test_extract_speed.py), about 1.2x faster on
CPU (bench/extract.py). `avtk.embed.embed` uses it.
"""
import torch
from torch import nn

from avtk.errors import AvtkError
from avtk.features.fbank import positions
from avtk.models.fold import bn_affine

#: Prefix of the seed's front-end buffers in its checkpoints; they belong to the front end, not the encoder.
SEED_FRONTEND_PREFIX = "torchfbank."


def length_mask(lengths, like, dtype):
    """(batch, 1, frames) mask: 1 on the first lengths[i] frames of item i, 0 on the padding; `like` is any
    (batch, frames) tensor on the lengths' device (its values are not used: the frame index is built from it,
    so a traced graph records no device, see avtk.features.fbank.positions)."""
    return (positions(like) < lengths[:, None]).to(dtype).unsqueeze(1)


def check_lengths(lengths, frames, batch):
    """Validate `lengths` against a (batch, ..., frames) input; returns them as a long tensor."""
    lengths = (lengths if torch.is_tensor(lengths) else torch.as_tensor(lengths)).long()
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise AvtkError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > frames).any()):
        raise AvtkError(f"lengths must lie in [1, {frames}] (the padded number of frames), "
                        f"got min {int(lengths.min())} and max {int(lengths.max())}")
    return lengths


def masked_input(x, lengths, in_dim):
    """(x with its padding zeroed, (batch, 1, frames) mask or None, count) for an ECAPA-TDNN forward pass:
    checks the (batch, in_dim, frames) shape and the lengths; mask and count are None and the int frames when
    no item is padded, else count is (batch, 1, 1) valid frames."""
    if x.dim() != 3 or x.shape[1] != in_dim:
        raise AvtkError(f"ECAPA-TDNN expects features (batch, {in_dim}, frames), got {tuple(x.shape)}")
    frames = x.shape[-1]
    if lengths is None:
        return x, None, frames
    lengths = check_lengths(lengths, frames, x.shape[0])
    if lengths.device != x.device:  # (a conditional move: .to(device) would record the device in a trace)
        lengths = lengths.to(x.device)
    if not bool((lengths < frames).any()):
        return x, None, frames
    mask = length_mask(lengths, x[:, 0], x.dtype)
    return x * mask, mask, lengths.to(x.dtype).view(-1, 1, 1)


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
        """Attentive statistics pooling; the statistics (h², variances) are float32 whatever the autocast: in
        float16, h * h overflows once |h| >= 256. Only the attention's convs follow the autocast."""
        h = h.float()
        frames = h.shape[-1]
        with torch.autocast(h.device.type, enabled=False):
            mean, std = masked_mean_std(h, mask, count, 1e-4)
            context = torch.cat([h, mean.expand(-1, -1, frames), std.expand(-1, -1, frames)], dim=1)
        scores = self.attention(context).float()
        with torch.autocast(h.device.type, enabled=False):
            if mask is not None:
                scores = scores.masked_fill(mask == 0, float("-inf"))
            w = torch.softmax(scores, dim=-1)
            mu = (h * w).sum(dim=-1)
            sg = ((h * h * w).sum(dim=-1) - mu * mu).clamp(min=1e-4).sqrt()
            return torch.cat([mu, sg], dim=1)

    def forward(self, x, lengths=None):
        x, mask, count = masked_input(x, lengths, self.in_dim)
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


# ------------------------------------------------------------------------------------------ inference only


def _relu_bounds(scale):
    """Per-channel (low, high) clamp bounds with relu(y) * scale == clamp(y * scale, low, high) exactly:
    [0, inf) where scale >= 0, (-inf, 0] where it is negative."""
    zero, inf = torch.zeros_like(scale), torch.full_like(scale, float("inf"))
    negative = scale < 0
    return torch.where(negative, -inf, zero), torch.where(negative, zero, inf)


def _sqrt(x):
    """sqrt of a small positive tensor as x * rsqrt(x) (within 2 ulp): torch's CPU sqrt (also exp, tanh, ...)
    starts a parallel region from ~100 elements, and on a loaded 2-core machine each such region waited ~8 ms
    for its second thread; rsqrt stays serial below 32,768 elements."""
    return x * torch.rsqrt(x)


class _ConvReluBn(nn.Module):
    """bn(relu(conv(x))) of an eval-mode block, with the BN's scale folded into the conv.

    relu(y) * s = max(y * s, 0) for s > 0 (min(y * s, 0) for s < 0), so the scale moves into the conv's weight
    and bias and the ReLU becomes a clamp; the BN's shift is added after it (it cannot move into the conv: the
    ReLU sits between them). The activation, the shift and the padding mask are applied in place.
    in_channels: keep only the conv's first in_channels inputs (the attention's; see FusedEcapaTdnn).
    """

    def __init__(self, conv, bn, in_channels=None):
        super().__init__()
        scale, shift = bn_affine(bn)
        dtype = conv.weight.dtype
        low, high = _relu_bounds(scale)
        scale = scale.to(dtype)
        self.register_buffer("weight", conv.weight.detach()[:, :in_channels] * scale[:, None, None])
        self.register_buffer("bias", conv.bias.detach() * scale)
        self.register_buffer("shift", shift.to(dtype)[:, None])
        self.register_buffer("low", low.to(dtype)[:, None])
        self.register_buffer("high", high.to(dtype)[:, None])
        self.positive = bool((scale > 0).all())  # the common case: a plain in-place ReLU
        self.padding, self.dilation = conv.padding, conv.dilation

    def forward(self, x, mask=None, bias=None):
        """bias: (batch, out, 1) added instead of the folded conv bias (which it must include)."""
        y = nn.functional.conv1d(x, self.weight, self.bias if bias is None else None, padding=self.padding,
                                 dilation=self.dilation)
        if bias is not None:
            y.add_(bias)
        if self.positive:
            y.relu_()
        else:
            torch.clamp(y, self.low, self.high, out=y)
        y.add_(self.shift)
        return y if mask is None else y.mul_(mask)


class _FusedRes2Block(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.width, self.nums = block.width, block.nums
        self.conv1 = _ConvReluBn(block.conv1, block.bn1)
        self.convs = nn.ModuleList(_ConvReluBn(c, b) for c, b in zip(block.convs, block.bns))
        self.conv3 = _ConvReluBn(block.conv3, block.bn3)
        self.se1, self.se2 = block.se.se[1], block.se.se[3]  # shared with the model, unchanged

    def forward(self, x, mask, count, out):
        """Writes the block's output into `out` (a slice of layer4's input) and returns it."""
        splits = torch.split(self.conv1(x, mask), self.width, dim=1)
        pieces, sp = [], None
        for i in range(self.nums):
            sp = splits[i] if i == 0 else sp + splits[i]
            sp = self.convs[i](sp, mask)
            pieces.append(sp)
        pieces.append(splits[self.nums])
        h = self.conv3(torch.cat(pieces, dim=1), mask)
        s = h.sum(dim=-1, keepdim=True) / count  # h is zero on the padding
        h.mul_(torch.sigmoid(self.se2(torch.relu(self.se1(s)))))
        return torch.add(h, x, out=out)


class FusedEcapaTdnn(nn.Module):
    """An EcapaTdnn for inference only; see fuse_for_inference."""

    def __init__(self, model):
        super().__init__()
        self.in_dim, self.channels, self.embed_dim = model.in_dim, model.channels, model.embed_dim
        self.conv1 = _ConvReluBn(model.conv1, model.bn1)
        self.layers = nn.ModuleList(_FusedRes2Block(b) for b in (model.layer1, model.layer2, model.layer3))
        self.layer4 = model.layer4  # shared with the model, unchanged
        pooled = model.layer4.out_channels
        # Attention: its first conv sees [h; mean; std], whose last two parts are constant over time, so it is
        # W_h h + (W_m mean + W_s std + b): a (batch, attention) bias instead of 2/3 of the conv. Its BN
        # (after the ReLU) has its scale folded in by _ConvReluBn, and into the context weights here.
        conv, bn = model.attention[0], model.attention[2]
        self.attention = _ConvReluBn(conv, bn, in_channels=pooled)
        scale = bn_affine(bn)[0].to(conv.weight.dtype)
        self.register_buffer("att_context", (conv.weight.detach()[:, pooled:, 0] * scale[:, None]).contiguous())
        self.att_out = model.attention[4]  # shared with the model, unchanged
        # Head: bn5 -> fc6 -> bn6, all affine: one Linear.
        dtype = model.fc6.weight.dtype
        s5, b5 = bn_affine(model.bn5)
        s6, b6 = bn_affine(model.bn6)
        weight, bias = model.fc6.weight.detach().double(), model.fc6.bias.detach().double()
        self.register_buffer("head_weight", (s6[:, None] * weight * s5[None, :]).to(dtype))
        self.register_buffer("head_bias", (s6 * (weight @ b5 + bias) + b6).to(dtype))
        self.training = False  # not .eval(): that would reach into the shared modules of `model`

    def _pool(self, h, mask, count):
        """Attentive statistics pooling as EcapaTdnn._pool (h is zero on the padding)."""
        if mask is None and h.shape[-1] > 1:
            var, mean = torch.var_mean(h, dim=-1, keepdim=True)  # unbiased, as masked_mean_std at T >= 2
            std = _sqrt(var.clamp(min=1e-4))
        else:
            mean, std = masked_mean_std(h, mask, count, 1e-4)
        context = torch.cat([mean, std], dim=1)[:, :, 0] @ self.att_context.T + self.attention.bias  # (B, A)
        scores = self.att_out(self.attention(h, bias=context[:, :, None]).tanh_())
        if mask is not None:
            scores.masked_fill_(mask == 0, float("-inf"))
        w = torch.softmax(scores, dim=-1).mul_(h)
        mu = w.sum(dim=-1)
        sg = _sqrt((w.mul_(h).sum(dim=-1) - mu * mu).clamp(min=1e-4))
        return torch.cat([mu, sg], dim=1)

    def forward(self, x, lengths=None):
        x, mask, count = masked_input(x, lengths, self.in_dim)
        frames = x.shape[-1]
        x = self.conv1(x.contiguous(), mask)
        c = self.channels
        # layer4's input cat(x1, x2, x3), written in place by the blocks.
        cat = torch.empty(x.shape[0], 3 * c, frames, dtype=x.dtype, device=x.device)
        x1, x2, x3 = cat[:, :c], cat[:, c:2 * c], cat[:, 2 * c:]
        self.layers[0](x, mask, count, x1)
        x = x + x1
        self.layers[1](x, mask, count, x2)
        self.layers[2](x.add_(x2), mask, count, x3)
        del x, x1, x2, x3
        h = self.layer4(cat).relu_()
        del cat
        if mask is not None:
            h.mul_(mask)
        return nn.functional.linear(self._pool(h, mask, count), self.head_weight, self.head_bias)


def fuse_for_inference(model):
    """An equivalent, faster copy of an eval-mode EcapaTdnn for extraction (`model` is not changed).

    - each conv -> ReLU -> BN keeps its order, with the BN's scale folded into the conv (the ReLU becomes a
      per-channel clamp; exact) and its shift added in place; activation, shift and padding mask run in place;
    - the attention's first conv acts on h only: the time-constant mean and std parts become a bias per item
      (a third of its multiply-adds); its BN scale is folded as above;
    - bn5 -> fc6 -> bn6 is one Linear; the blocks write their outputs straight into layer4's input.

    Eval-mode BatchNorm statistics are used whatever the mode. The folded weights are new tensors; layer4, the
    SE convs and the attention's last conv are `model`'s own modules (shared, not copied), so build the module
    again after the weights change. For use under torch.no_grad or torch.inference_mode. Embeddings agree with
    model.eval()'s within float32 rounding (about 2e-6 at C=256 with embeddings of norm ~3; tested at 1e-4),
    batched or not.
    """
    if not isinstance(model, EcapaTdnn):
        raise AvtkError(f"fuse_for_inference takes an EcapaTdnn, got {type(model).__name__}")
    return FusedEcapaTdnn(model)
