"""The seed system's speaker front end (ECAPA-L of AVCleanse), batched, with its checkpoint's buffer names.

The computation (see REFERENCE §1, "Front end"), on a float waveform in [-1, 1] at 16 kHz:

1. pre-emphasis 0.97, y[t] = x[t] - 0.97 x[t-1], with x[-1] = x[1] (reflection);
2. power mel spectrogram: 512-point FFT of 400-sample periodic Hamming windows (centred in the 512 points),
   hop 160, frames centred on t * 160 with the signal reflected at both ends (x[-k] = x[k],
   x[n-1+k] = x[n-1-k]), so an utterance of n samples has 1 + n // 160 frames (2.015 s: 202 frames);
   80 triangular filters equally spaced on the HTK mel scale (2595 log10(1 + f/700)) from 20 to 7600 Hz,
   peak 1, not normalised;
3. ln(x + 1e-6);
4. subtraction of the mean over time, per bin.

Batches: each utterance is reflected about its own last valid sample and its mean is taken over its own
frames only, so a padded batch gives exactly the features of its utterances computed one by one; frames
past an utterance's count are zero.

Module layout, so the released checkpoints' front-end buffers load by name::

    torchfbank.0.flipped_filter     [1, 1, 2]   (-0.97, 1): the pre-emphasis filter, flipped for conv1d
    torchfbank.1.spectrogram.window [400]       the Hamming window
    torchfbank.1.mel_scale.fb       [257, 80]   the mel filters (FFT bins x mel bins)
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from avtk.features.fbank import _check_lengths
from avtk.features.mel import htk_mel_filterbank

SAMPLE_RATE = 16000
N_FFT = 512
WIN_LENGTH = 400
HOP_LENGTH = 160
N_MELS = 80
F_MIN, F_MAX = 20.0, 7600.0
LOG_OFFSET = 1e-6


def seed_num_frames(num_samples):
    """Frames of the seed front end for `num_samples` samples: 1 + n // 160, and 0 for an empty input."""
    if torch.is_tensor(num_samples):
        n = num_samples.long()
        return torch.where(n > 0, 1 + torch.div(n, HOP_LENGTH, rounding_mode="floor"), torch.zeros_like(n))
    n = int(num_samples)
    return 1 + n // HOP_LENGTH if n > 0 else 0


def _reflect_no_edge(pos, n):
    """Reflection without repeating the edge sample (x[-1] = x[1], x[n] = x[n-2]), into [0, n); n >= 1."""
    period = (2 * (n - 1)).clamp_min(1)
    r = torch.remainder(pos, period)
    r = torch.where(r >= n, period - r, r)
    return torch.where(n > 1, r, torch.zeros_like(r))


class PreEmphasis(nn.Module):
    """y[t] = x[t] - coeff x[t-1], x[-1] = x[1]; buffer `flipped_filter` [1, 1, 2] = (-coeff, 1)."""

    def __init__(self, coeff=0.97):
        super().__init__()
        self.register_buffer("flipped_filter", torch.tensor([-coeff, 1.0], dtype=torch.float32).view(1, 1, 2))

    def forward(self, wave):
        """(B, T) -> (B, T). A one-sample input (nothing to reflect) is left as it is, as if x[1] were 0."""
        if wave.shape[-1] < 2:
            return wave.clone()
        x = F.pad(wave.unsqueeze(1), (1, 0), mode="reflect")
        return F.conv1d(x, self.flipped_filter).squeeze(1)


class Spectrogram(nn.Module):
    """Power spectrogram with centred, reflect-padded frames; buffer `window` [win_length] (periodic Hamming)."""

    def __init__(self, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.register_buffer("window", torch.hamming_window(win_length, periodic=True, dtype=torch.float32))

    def forward(self, wave, lengths, longest=None):
        """(B, T) waveform, (B,) valid samples -> (B, frames_max, n_fft // 2 + 1) power, frames_max = 1 + max // hop.

        Each utterance is reflected about its own ends, so padding never leaks into its frames. `longest`, the
        largest of `lengths` as a Python int, spares a device sync.
        """
        frames_max = 1 + (int(lengths.max()) if longest is None else longest) // self.hop_length
        half = self.n_fft // 2
        span = (frames_max - 1) * self.hop_length + self.n_fft
        pos = torch.arange(span, device=wave.device) - half
        idx = _reflect_no_edge(pos[None, :], lengths.clamp_min(1)[:, None])
        frames = torch.gather(wave, 1, idx).unfold(1, self.n_fft, self.hop_length)  # (B, F, n_fft)
        left = (self.n_fft - self.win_length) // 2  # the window sits in the middle of the n_fft points
        window = F.pad(self.window, (left, self.n_fft - self.win_length - left))
        spec = torch.fft.rfft(frames * window, n=self.n_fft, dim=-1)
        return torch.view_as_real(spec).pow(2).sum(-1)


class MelScale(nn.Module):
    """Power spectrum -> mel energies; buffer `fb` [n_fft // 2 + 1, n_mels]."""

    def __init__(self, n_mels=N_MELS, sample_rate=SAMPLE_RATE, f_min=F_MIN, f_max=F_MAX, n_fft=N_FFT):
        super().__init__()
        self.register_buffer("fb", htk_mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max))

    def forward(self, spec):
        return torch.matmul(spec, self.fb)


class MelSpectrogram(nn.Module):
    """`spectrogram` then `mel_scale`: (B, T), lengths -> (B, frames, n_mels) power mel energies."""

    def __init__(self):
        super().__init__()
        self.spectrogram = Spectrogram()
        self.mel_scale = MelScale()

    def forward(self, wave, lengths, longest=None):
        return self.mel_scale(self.spectrogram(wave, lengths, longest))


class _Sequential(nn.Sequential):
    """nn.Sequential whose second stage also takes the lengths (keeps the checkpoint's `torchfbank.N` names)."""

    def forward(self, wave, lengths, longest=None):
        return self[1](self[0](wave), lengths, longest)


class SeedFrontend(nn.Module):
    """The seed's front end: (wave (B, T) in [-1, 1], lengths) -> (feats (B, F, 80) float32, num_frames (B,)).

    Log mel energies with each utterance's mean over its valid frames removed; padded frames are zero.
    """

    sample_rate = SAMPLE_RATE
    frame_shift = HOP_LENGTH
    out_dim = N_MELS

    def __init__(self):
        super().__init__()
        self.torchfbank = _Sequential(PreEmphasis(), MelSpectrogram())

    def num_frames(self, num_samples):
        """1 + n // 160 frames for n > 0 samples (int or integer tensor)."""
        return seed_num_frames(num_samples)

    def forward(self, wave: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        lengths, longest = _check_lengths(wave, lengths, "SeedFrontend")
        counts = seed_num_frames(lengths)
        batch = wave.shape[0]
        if batch == 0 or longest == 0:  # host ints: no device sync
            return wave.new_zeros((batch, 0, N_MELS), dtype=torch.float32), counts
        with torch.autocast(device_type=wave.device.type, enabled=False):
            # Zero the padding: pre-emphasis looks only back, except for a one-sample utterance (x[-1] = x[1]).
            valid_samples = torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]
            x = wave.float().masked_fill(~valid_samples, 0.0)
            feats = (self.torchfbank(x, lengths, longest) + LOG_OFFSET).log()
            valid = (torch.arange(feats.shape[1], device=feats.device)[None, :] < counts[:, None]).unsqueeze(-1)
            feats = feats.masked_fill(~valid, 0.0)
            mean = feats.sum(1, keepdim=True) / counts.clamp_min(1).view(-1, 1, 1).to(feats.dtype)
            feats = (feats - mean).masked_fill(~valid, 0.0)
        return feats.contiguous(), counts
