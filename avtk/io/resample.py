"""Band-limited resampling with a windowed-sinc polyphase filter, written on torch (conv1d, no loops over samples).

With g = gcd(orig_sr, new_sr), O = orig_sr / g input samples map onto N = new_sr / g output samples. Output
sample m = k*N + j (phase j) lies at input position (k*O + j*O/N), so every phase j is one filter
h_j[i] = h(j*O/N - i), applied at input positions k*O + i: all N phases are the N output channels of a single
`conv1d` with stride O, whose outputs are interleaved into the output signal.

The filter is an ideal low-pass at `rolloff` times the lower of the two Nyquist frequencies,
    h(t) = 2*fc/orig_sr * sinc(2*fc*t/orig_sr) * w(t)        (t in input samples),
truncated to `lowpass_width` zero crossings on each side and tapered by a Kaiser (default) or Hann window w.
The factor 2*fc/orig_sr makes its DC gain 1. Output sample m estimates the band-limited signal at time
m / new_sr, so the first output sample is aligned with the first input sample; the output has
ceil(len * new_sr / orig_sr) samples.
"""
from __future__ import annotations

import math

import torch

# A polyphase bank larger than this (phases x taps) means the two rates share almost no common factor.
_MAX_BANK = 20_000_000


def _window(t, half_width, window, beta):
    """Window at positions t (|t| <= half_width), zero outside."""
    x = (t / half_width).clamp(-1.0, 1.0)
    if window == "kaiser":
        w = torch.special.i0(beta * torch.sqrt(1.0 - x * x)) / torch.special.i0(torch.tensor(beta, dtype=t.dtype))
    elif window == "hann":
        w = 0.5 * (1.0 + torch.cos(math.pi * x))
    else:
        raise ValueError(f"unknown window {window!r}: use 'kaiser' or 'hann'")
    return torch.where(t.abs() <= half_width, w, torch.zeros_like(w))


def _filter_bank(orig, new, lowpass_width, rolloff, window, beta):
    """(N, 1, taps) float64 polyphase bank and the left padding W, for reduced rates orig=O, new=N."""
    # Cut-off in cycles per input sample: rolloff x the lower Nyquist (0.5 cycles per sample of the slower rate).
    fc = rolloff * 0.5 * min(orig, new) / orig
    half_width = lowpass_width / (2.0 * fc)  # input samples covered on each side
    pad = int(math.ceil(half_width))
    taps = 2 * pad + orig
    # Phase j, tap n: input offset i = n - pad relative to k*O; distance from output position is j*O/N - i.
    j = torch.arange(new, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(taps, dtype=torch.float64).unsqueeze(0) - pad
    t = j * orig / new - i
    h = 2.0 * fc * torch.sinc(2.0 * fc * t) * _window(t, half_width, window, beta)
    return h.unsqueeze(1), pad


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int, *, lowpass_width: int = 16,
             rolloff: float = 0.99, window: str = "kaiser", beta: float = 8.6) -> torch.Tensor:
    """Resample `wave` (..., time) from orig_sr to new_sr; returns (..., ceil(time * new_sr / orig_sr)).

    lowpass_width: zero crossings of the sinc kept on each side (longer = sharper, slower).
    rolloff: cut-off as a fraction of the lower Nyquist frequency (0.99: 7.92 kHz when either rate is 16 kHz).
    window: 'kaiser' (with `beta`) or 'hann'.
    The result has wave's dtype (float32 or float64); the filter is designed in float64.
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} and {new_sr}")
    if not 0.0 < rolloff <= 1.0:
        raise ValueError(f"rolloff must be in (0, 1], got {rolloff}")
    if not torch.is_tensor(wave):
        wave = torch.as_tensor(wave)
    if not torch.is_floating_point(wave):
        wave = wave.to(torch.float32)
    if orig_sr == new_sr:
        return wave
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g

    shape = wave.shape
    length = shape[-1]
    out_len = -(-length * new // orig)  # ceil
    if length == 0:
        return wave.new_zeros(*shape[:-1], 0)

    bank, pad = _filter_bank(orig, new, lowpass_width, rolloff, window, beta)
    if bank.numel() > _MAX_BANK:
        raise ValueError(
            f"cannot resample {orig_sr} Hz -> {new_sr} Hz: the rates share too small a common factor "
            f"({new} phases x {bank.shape[-1]} taps)"
        )
    bank = bank.to(wave.dtype)
    taps = bank.shape[-1]

    blocks = -(-out_len // new)  # conv outputs needed (each gives N output samples)
    # Input padded with `pad` zeros on the left and enough on the right for `blocks` windows of stride O.
    right = max(0, (blocks - 1) * orig + taps - pad - length)
    x = wave.reshape(-1, 1, length)
    x = torch.nn.functional.pad(x, (pad, right))
    y = torch.nn.functional.conv1d(x, bank, stride=orig)  # (batch, N, blocks)
    y = y[..., :blocks].transpose(1, 2).reshape(x.shape[0], -1)[:, :out_len]
    return y.reshape(*shape[:-1], out_len)
