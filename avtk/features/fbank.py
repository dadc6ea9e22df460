"""Kaldi-compatible log-mel filterbank features on torch, batched, on CPU or GPU.

`KaldiFbank` follows the documented behaviour of Kaldi's `compute-fbank-feats` (feature-window.cc,
mel-computations.cc, feature-fbank.cc), so its output matches Kaldi's on the same audio:

* Scale. The input is a float waveform in [-1, 1] (as `avtk.io.audio` reads it: 16-bit PCM / 32768).
  It is multiplied by 32768 inside, so the features equal Kaldi's, which reads 16-bit wav files as
  integer-valued floats. (Log features differ from the unscaled ones by a constant 2 ln 32768 only when
  the log floor is not reached; this is why the scale matters.)
* Framing. Window `int(sample_rate * 0.001 * frame_length_ms)` samples, shift likewise.
  With `snip_edges=True` a frame starts every shift and only whole frames are kept:
  `1 + (n - window) // shift` frames (0 if n < window). With `snip_edges=False` frame f is centred on
  `f * shift + shift // 2` (it starts at that point minus `window // 2`), there are
  `(n + shift // 2) // shift` frames, and samples outside the signal are taken by reflection
  (-1 -> 0, -2 -> 1, n -> n - 1, repeated as needed).
* Per frame, in order: dither (`dither` x standard normal noise), removal of the frame's mean
  (`remove_dc_offset`), raw log energy (`use_energy`; before pre-emphasis and windowing), pre-emphasis
  `y[i] = x[i] - p x[i-1]` with `y[0] = x[0] - p x[0]`, the window (`povey` = Hann^0.85, `hamming`,
  `hanning`, `rectangular`, `blackman`; all with denominator `window - 1`), zero padding to the next power
  of two (`round_to_power_of_two`), power spectrum (magnitude if `use_power=False`), triangular mel filters,
  natural log floored at float32 epsilon (1.1920929e-07).
* Mel filters. mel(f) = 1127 ln(1 + f / 700). `num_mel_bins` triangles equally spaced in mel between
  `low_freq` and `high_freq` (`high_freq <= 0` means Nyquist + high_freq), weight rising linearly in mel
  from 0 at the left edge to 1 at the centre and falling to 0 at the right edge, evaluated at FFT bin
  frequencies `k * sample_rate / n_fft` for k < n_fft / 2 (the Nyquist bin gets no weight); not
  normalised.
* `use_energy=True` prepends the log energy as coefficient 0 (floored at ln(energy_floor) when
  energy_floor > 0), so features have num_mel_bins + 1 dimensions.

Dither draws from the `generator` passed to `forward` (a torch.Generator on the input's device) or, when
none is given, from torch's global RNG; with dither 0 (the default) features are deterministic and a batch
gives exactly the features of its utterances computed one by one.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from avtk.errors import AvtkError

FLOAT_EPSILON = float(torch.finfo(torch.float32).eps)  # 1.1920929e-07, Kaldi's log floor
WAVE_SCALE = 32768.0
WINDOW_TYPES = ("povey", "hamming", "hanning", "rectangular", "blackman")


def _samples(sample_rate, ms):
    """Kaldi's int32(samp_freq * 0.001 * ms), with float options as float32 like Kaldi's BaseFloat."""
    import numpy as np

    return int(float(np.float32(sample_rate)) * 0.001 * float(np.float32(ms)))


MAX_FRAME_MS = 1000  # the longest frame length and shift a front end takes, in ms


def frame_geometry(sample_rate=16000, frame_length_ms=25.0, frame_shift_ms=10.0, round_to_power_of_two=True):
    """(window samples, shift samples, FFT size) as Kaldi computes them."""
    length = _samples(sample_rate, frame_length_ms)
    shift = _samples(sample_rate, frame_shift_ms)
    n_fft = 1 << (length - 1).bit_length() if round_to_power_of_two else length
    return length, shift, n_fft


def num_frames(num_samples, frame_length_ms=25.0, frame_shift_ms=10.0, sample_rate=16000, snip_edges=True):
    """Kaldi's frame count for `num_samples` samples (an int, or an integer tensor giving a long tensor)."""
    length, shift, _ = frame_geometry(sample_rate, frame_length_ms, frame_shift_ms)
    return _num_frames(num_samples, length, shift, snip_edges)


def _num_frames(n, length, shift, snip_edges):
    if torch.is_tensor(n):
        n = n.long()
        if snip_edges:
            return torch.where(n < length, torch.zeros_like(n), 1 + torch.div(n - length, shift, rounding_mode="floor"))
        return torch.div(n + shift // 2, shift, rounding_mode="floor")
    n = int(n)
    if snip_edges:
        return 0 if n < length else 1 + (n - length) // shift
    return (n + shift // 2) // shift


def mel_scale(freq):
    """Kaldi's mel scale, 1127 ln(1 + f / 700) (float64)."""
    return 1127.0 * torch.log1p(torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def kaldi_mel_banks(num_bins, n_fft, sample_rate, low_freq=20.0, high_freq=0.0):
    """(n_fft // 2 + 1, num_bins) float64 triangular filters on Kaldi's mel scale (last row, Nyquist, zero)."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq = nyquist + high_freq
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise AvtkError(f"invalid mel band: low_freq {low_freq:g} Hz, high_freq {high_freq:g} Hz with Nyquist "
                        f"{nyquist:g} Hz (need 0 <= low_freq < high_freq <= Nyquist; high_freq <= 0 is an offset "
                        "from Nyquist)")
    if num_bins < 1:
        raise AvtkError(f"num_mel_bins must be >= 1, got {num_bins}")
    mel_low, mel_high = float(mel_scale(low_freq)), float(mel_scale(high_freq))
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * torch.arange(num_bins, dtype=torch.float64)
    centre, right = left + delta, left + 2 * delta
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    mel = mel_scale(bins * (sample_rate / n_fft))[:, None]
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    weights = torch.where((mel > left) & (mel < right), torch.minimum(up, down), torch.zeros(()))
    weights = weights.clamp_min(0.0)
    weights[n_fft // 2:] = 0.0  # Kaldi's banks cover bins 0 .. n_fft/2 - 1
    empty = (weights.sum(0) == 0).nonzero().flatten().tolist()
    if empty:  # its log energy would be the floor in every frame, a constant column (Kaldi refuses it too)
        raise AvtkError(f"num_mel_bins (--num-mel-bins) = {num_bins}: too many for a {n_fft}-point FFT at "
                        f"{sample_rate:g} Hz between {low_freq:g} and {high_freq:g} Hz: {len(empty)} mel bin"
                        f"{'s cover' if len(empty) > 1 else ' covers'} no FFT bin (the first: {empty[0] + 1}); use fewer "
                        "bins or a longer frame")
    return weights


def feature_window(window_type, length, blackman_coeff=0.42):
    """Kaldi's analysis window of `length` samples (float64)."""
    i = torch.arange(length, dtype=torch.float64)
    a = 2.0 * math.pi / (length - 1) if length > 1 else 0.0
    if window_type == "hanning":
        return 0.5 - 0.5 * torch.cos(a * i)
    if window_type == "hamming":
        return 0.54 - 0.46 * torch.cos(a * i)
    if window_type == "povey":
        return (0.5 - 0.5 * torch.cos(a * i)).pow(0.85)
    if window_type == "rectangular":
        return torch.ones(length, dtype=torch.float64)
    if window_type == "blackman":
        return blackman_coeff - 0.5 * torch.cos(a * i) + (0.5 - blackman_coeff) * torch.cos(2 * a * i)
    raise AvtkError(f"unknown window_type {window_type!r} (one of {', '.join(WINDOW_TYPES)})")


def positions(x):
    """0, 1, ..., n - 1 (int64) along the last axis of `x` (n = x.shape[-1]), broadcast to x's shape and device.

    Built as ones_like(x).cumsum(-1) - 1, which a trace (torch.jit.trace, the ONNX exporter) records without a
    device: `torch.arange(n, device=x.device)` would freeze the tracing device into the graph as a constant,
    and the exported graph would fail on any other device. Index and mask tensors reached from a traced
    forward are built with this.
    """
    return torch.ones_like(x, dtype=torch.long).cumsum(-1) - 1


def reflect_index(pos, n):
    """Kaldi's reflection of sample positions `pos` into [0, n): -1 -> 0, n -> n - 1, repeated as needed.

    pos: long tensor; n: long tensor broadcastable to pos, every element >= 1.
    """
    period = 2 * n
    r = torch.remainder(pos, period)
    return torch.where(r >= n, period - 1 - r, r)


def _check_lengths(wave, lengths, name):
    """(lengths (B,) int64 on wave's device, the longest as a Python int) of a (B, T) waveform.

    lengths None means T each. The longest sizes the output, so it must be known on the host: lengths given
    on the CPU (as the loaders give them) or None cost no device sync; lengths on a GPU cost one.
    """
    if wave.dim() != 2:
        raise AvtkError(f"{name}: expected a (batch, samples) waveform, got shape {tuple(wave.shape)}")
    batch, total = wave.shape
    if lengths is None:
        return torch.full((batch,), total, dtype=torch.long, device=wave.device), total
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (batch,):
        raise AvtkError(f"{name}: lengths has shape {tuple(lengths.shape)}, expected ({batch},)")
    low, high = torch.stack([lengths.min(), lengths.max()]).tolist() if batch else (0, 0)
    if low < 0 or high > total:
        raise AvtkError(f"{name}: lengths must be in [0, {total}] (the padded length)")
    return lengths.to(device=wave.device, dtype=torch.long), int(high)


class KaldiFbank(nn.Module):
    """Kaldi-compatible log-mel filterbank; see the module docstring for the exact computation.

    forward(wave (B, T) float in [-1, 1], lengths (B,) valid samples or None, generator=None)
        -> (feats (B, F_max, dim) float32, num_frames (B,) long); frames past an utterance's count are 0.
    """

    def __init__(self, num_mel_bins=80, frame_length_ms=25.0, frame_shift_ms=10.0, sample_rate=16000,
                 preemphasis=0.97, remove_dc_offset=True, dither=0.0, window_type="povey", snip_edges=True,
                 low_freq=20.0, high_freq=0.0, round_to_power_of_two=True, use_energy=False, energy_floor=0.0,
                 use_power=True, blackman_coeff=0.42):
        super().__init__()
        if window_type not in WINDOW_TYPES:
            raise AvtkError(f"unknown window_type {window_type!r} (one of {', '.join(WINDOW_TYPES)})")
        if sample_rate <= 0:
            raise AvtkError(f"sample_rate must be positive, got {sample_rate}")
        for name, value in (("frame_length_ms", frame_length_ms), ("frame_shift_ms", frame_shift_ms)):
            if not 0 < value <= MAX_FRAME_MS:
                raise AvtkError(f"{name} (--{name.replace('_', '-')}) = {value:g}: must be > 0 and <= "
                                f"{MAX_FRAME_MS} (ms)")
        length, shift, n_fft = frame_geometry(sample_rate, frame_length_ms, frame_shift_ms, round_to_power_of_two)
        if length < 2 or shift < 1:
            raise AvtkError(f"frame of {length} samples with shift {shift} at {sample_rate} Hz is too small "
                            f"(frame_length_ms {frame_length_ms}, frame_shift_ms {frame_shift_ms})")
        if dither < 0 or energy_floor < 0:
            raise AvtkError("dither and energy_floor must be >= 0")
        self.num_mel_bins = int(num_mel_bins)
        self.frame_length_ms, self.frame_shift_ms = float(frame_length_ms), float(frame_shift_ms)
        self.sample_rate = int(sample_rate)
        self.preemphasis = float(preemphasis)
        self.remove_dc_offset = bool(remove_dc_offset)
        self.dither = float(dither)
        self.window_type = window_type
        self.snip_edges = bool(snip_edges)
        self.low_freq, self.high_freq = float(low_freq), float(high_freq)
        self.round_to_power_of_two = bool(round_to_power_of_two)
        self.use_energy = bool(use_energy)
        self.energy_floor = float(energy_floor)
        self.use_power = bool(use_power)
        self.frame_length, self.frame_shift, self.n_fft = length, shift, n_fft
        # Derived entirely from the options, so not part of a state_dict.
        self.register_buffer("window", feature_window(window_type, length, blackman_coeff).float(), persistent=False)
        self.register_buffer("mel_fb", kaldi_mel_banks(self.num_mel_bins, n_fft, self.sample_rate, self.low_freq,
                                                       self.high_freq).float(), persistent=False)

    @property
    def out_dim(self):
        """Feature dimension: num_mel_bins, plus 1 with use_energy."""
        return self.num_mel_bins + int(self.use_energy)

    def num_frames(self, num_samples):
        """Frames for `num_samples` samples (int or integer tensor)."""
        return _num_frames(num_samples, self.frame_length, self.frame_shift, self.snip_edges)

    def extra_repr(self):
        return (f"num_mel_bins={self.num_mel_bins}, frame={self.frame_length}/{self.frame_shift} samples, "
                f"n_fft={self.n_fft}, window={self.window_type}, snip_edges={self.snip_edges}, "
                f"low_freq={self.low_freq:g}, high_freq={self.high_freq:g}, dither={self.dither:g}")

    def _frames(self, wave, lengths, frames_max):
        """(B, frames_max, frame_length) windows of the (scaled) waveform, Kaldi framing."""
        length, shift = self.frame_length, self.frame_shift
        if self.snip_edges:
            need = (frames_max - 1) * shift + length
            return wave[:, :need].unfold(1, length, shift)
        # Frame f covers [f*shift + shift//2 - length//2, ... + length); outside samples are reflected
        # about each utterance's own ends, so a padded batch frames exactly like each utterance alone.
        start = shift // 2 - length // 2
        span = (frames_max - 1) * shift + length
        pos = torch.arange(span, device=wave.device) + start
        idx = reflect_index(pos[None, :], lengths.clamp_min(1)[:, None])
        return torch.gather(wave, 1, idx).unfold(1, length, shift)

    # Frames computed together on the CPU: enough to amortise the per-operation overhead, few enough that the
    # (rows, n_fft) intermediates stay in cache (a batch of 16 utterances of 20 s is 65 MB per intermediate).
    CPU_CHUNK_FRAMES = 1024

    def _rows_to_feats(self, frames):
        """(..., frame_length) frames of the scaled waveform (dither already added) -> (..., out_dim) features.

        The arithmetic is the same for any batch shape, so a frame's features do not depend on its batch.
        """
        length, p = self.frame_length, self.preemphasis
        if self.remove_dc_offset:
            frames = frames - frames.mean(dim=-1, keepdim=True)
        if self.use_energy:
            energy = frames.pow(2).sum(-1).clamp_min(FLOAT_EPSILON).log()
            if self.energy_floor > 0.0:
                energy = energy.clamp_min(math.log(self.energy_floor))
        if frames.requires_grad and torch.is_grad_enabled():  # differentiable (out= and in-place ops are not)
            if p != 0.0:
                frames = torch.cat([frames[..., :1] * (1.0 - p), frames[..., 1:] - p * frames[..., :-1]], dim=-1)
            spec = torch.view_as_real(torch.fft.rfft(frames * self.window, n=self.n_fft, dim=-1)).pow(2).sum(-1)
            if not self.use_power:
                spec = spec.sqrt()
            feats = torch.matmul(spec, self.mel_fb).clamp_min(FLOAT_EPSILON).log()
        else:
            # Pre-emphasis and window written into the zero-padded FFT buffer: the same float32 operations in
            # the same order as the branch above, with fewer passes over memory.
            buf = frames.new_empty(frames.shape[:-1] + (self.n_fft,))
            buf[..., length:] = 0.0
            y = buf[..., :length]
            if p != 0.0:
                torch.mul(frames[..., :-1], p, out=y[..., 1:])
                torch.sub(frames[..., 1:], y[..., 1:], out=y[..., 1:])
                torch.mul(frames[..., :1], 1.0 - p, out=y[..., :1])
            else:
                y.copy_(frames)
            y.mul_(self.window)
            spec = torch.view_as_real(torch.fft.rfft(buf, dim=-1)).square_()
            spec = spec[..., 0] + spec[..., 1]  # = .sum(-1) bit for bit; a reduction over 2 is slow
            if not self.use_power:
                spec = spec.sqrt_()
            feats = torch.matmul(spec, self.mel_fb).clamp_min_(FLOAT_EPSILON).log_()
        if self.use_energy:
            feats = torch.cat([energy.unsqueeze(-1), feats], dim=-1)
        return feats

    def forward(self, wave: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        lengths, longest = _check_lengths(wave, lengths, "KaldiFbank")
        counts = self.num_frames(lengths)
        batch = wave.shape[0]
        frames_max = self.num_frames(longest)  # on the host: no device sync
        if frames_max == 0:
            return wave.new_zeros((batch, 0, self.out_dim), dtype=torch.float32), counts
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = wave.float() * WAVE_SCALE
            frames = self._frames(x, lengths, frames_max)  # (B, F, L), a view of x
            if self.dither != 0.0:
                noise = torch.randn(frames.shape, generator=generator, device=frames.device, dtype=frames.dtype)
                frames = frames + self.dither * noise
            if frames.device.type != "cpu":
                feats = self._rows_to_feats(frames)
                valid = torch.arange(frames_max, device=feats.device)[None, :] < counts[:, None]
                return feats.masked_fill(~valid.unsqueeze(-1), 0.0).contiguous(), counts
            # CPU: each utterance's own frames only (no work on padding), in cache-sized chunks.
            feats = frames.new_zeros((batch, frames_max, self.out_dim))
            chunk = self.CPU_CHUNK_FRAMES
            for b, n in enumerate(counts.tolist()):
                for f in range(0, n, chunk):
                    feats[b, f:min(f + chunk, n)] = self._rows_to_feats(frames[b, f:min(f + chunk, n)])
        return feats, counts
