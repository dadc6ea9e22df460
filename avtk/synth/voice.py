"""Source-filter speech synthesis with a persistent voice per speaker.

The source is a jittered, shimmered glottal pulse train plus aspiration noise; the filter is a cascade of
formant resonances whose targets follow a random phone sequence. Filtering is done frame by frame in the
STFT domain, so formants glide smoothly and the whole utterance is a few vectorised tensor operations.
"""
from dataclasses import dataclass

import numpy as np
import torch

SR = 16000
N_FFT = 512
HOP = 128

# Vowel formant targets F1..F3 (Hz) of an adult male reference vocal tract (Peterson & Barney style).
VOWELS = np.array([
    [270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410], [730, 1090, 2440],
    [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240], [640, 1190, 2390], [490, 1350, 1690],
], dtype=np.float64)
NASALS = np.array([[250, 1000, 2200], [250, 1400, 2300], [250, 1800, 2500]], dtype=np.float64)
FRICATIVE_BANDS = np.array([[4000, 7500], [2500, 6000], [1200, 7800], [3000, 5000]], dtype=np.float64)
F4, F5 = 3500.0, 4500.0


@dataclass
class Voice:
    """A speaker's persistent voice."""
    f0: float             # mean F0 (Hz)
    f0_range: float       # intonation spread (semitones, std)
    vtl: float            # vocal-tract length factor: formants scale by 1/vtl
    formant_bias: np.ndarray  # (5,) per-formant multiplicative deviation of this speaker
    vowel_bias: np.ndarray    # (10, 3) per-vowel accent: small shifts of each vowel's formants
    bandwidth: float      # formant bandwidth scale
    tilt: float           # extra source spectral tilt (dB/octave, negative = darker)
    jitter: float         # relative period perturbation
    shimmer: float        # relative pulse amplitude perturbation
    breathiness: float    # aspiration noise level relative to voicing
    rate: float           # speaking rate factor (phones per second relative to 11/s)
    timbre: np.ndarray    # (3, 3) speaker-specific resonances (sinus/nasal cavities): Hz, width Hz, gain dB
    fric_shift: float     # fricative band shift factor


def sample_voice(rng):
    female = rng.random() < 0.5
    return Voice(
        f0=float(np.exp(rng.normal(np.log(210 if female else 118), 0.13))),
        f0_range=float(rng.uniform(1.0, 3.5)),
        vtl=float(rng.normal(0.87 if female else 1.0, 0.06)),
        formant_bias=rng.normal(1.0, 0.07, 5),
        vowel_bias=rng.normal(1.0, 0.05, (len(VOWELS), 3)),
        bandwidth=float(rng.uniform(0.7, 1.6)),
        tilt=float(rng.uniform(-6.0, 3.0)),
        jitter=float(rng.uniform(0.002, 0.02)),
        shimmer=float(rng.uniform(0.02, 0.2)),
        breathiness=float(rng.uniform(0.02, 0.35)),
        rate=float(rng.uniform(0.75, 1.3)),
        timbre=np.column_stack([rng.uniform(700, 6000, 3), rng.uniform(100, 400, 3), rng.uniform(-10, 10, 3)]),
        fric_shift=float(rng.normal(1.0, 0.08)),
    )


def _phone_track(voice, n_frames, rng, rate_jitter):
    """Per-frame formant targets (5), voicing, frication band and loudness from a random phone string."""
    frame_s = HOP / SR
    formants = np.empty((n_frames, 5))
    voicing = np.zeros(n_frames)
    frication = np.zeros(n_frames)
    fric_band = np.zeros((n_frames, 2))
    loud = np.zeros(n_frames)
    base = np.array([500, 1500, 2500, F4, F5]) / voice.vtl * voice.formant_bias
    t = 0
    while t < n_frames:
        kind = rng.choice(5, p=[0.58, 0.1, 0.15, 0.1, 0.07])  # vowel, nasal, fricative, plosive, pause
        dur_s = rng.gamma(4.0, 0.09 / (voice.rate * rate_jitter) / 4.0)
        if kind == 4:
            dur_s = rng.uniform(0.08, 0.35)
        n = max(2, int(round(dur_s / frame_s)))
        seg = slice(t, min(t + n, n_frames))
        f = base.copy()
        if kind == 0:
            v = rng.integers(len(VOWELS))
            f[:3] = VOWELS[v] * voice.vowel_bias[v] / voice.vtl * voice.formant_bias[:3]
            voicing[seg], loud[seg] = 1.0, rng.uniform(0.7, 1.0)
        elif kind == 1:
            f[:3] = NASALS[rng.integers(len(NASALS))] / voice.vtl * voice.formant_bias[:3]
            voicing[seg], loud[seg] = 1.0, rng.uniform(0.3, 0.5)
        elif kind == 2:
            band = FRICATIVE_BANDS[rng.integers(len(FRICATIVE_BANDS))] * voice.fric_shift
            fric_band[seg] = np.minimum(band, 7900)
            frication[seg], loud[seg] = 1.0, rng.uniform(0.25, 0.5)
            voicing[seg] = float(rng.random() < 0.3)
        elif kind == 3:
            closure = max(1, n // 2)
            loud[t:t + closure] = 0.0
            burst = slice(t + closure, min(t + n, n_frames))
            fric_band[burst] = [1500, 7000]
            frication[burst], loud[burst] = 1.0, 0.5
        formants[seg] = f
        t += n
    # Coarticulation: smooth the step targets over about 40 ms.
    kernel = np.hanning(7)
    kernel /= kernel.sum()
    for track in (formants, fric_band):
        padded = np.pad(track, ((3, 3), (0, 0)), mode="edge")
        for j in range(track.shape[1]):
            track[:, j] = np.convolve(padded[:, j], kernel, mode="valid")
    voicing, frication, loud = (np.convolve(np.pad(x, 3, mode="edge"), kernel, mode="valid") for x in (voicing, frication, loud))
    return formants, voicing, frication, fric_band, loud


def _pulse_train(voice, n_samples, rng, f0_shift):
    """Glottal pulse excitation with intonation, jitter and shimmer."""
    n_ctrl = n_samples // 800 + 2  # 50 ms control rate: intonation moves a few semitones per second
    walk = np.cumsum(rng.normal(0, 1.0, n_ctrl))
    walk -= np.linspace(0, 0.3 * n_ctrl ** 0.5, n_ctrl)  # declination
    walk = (walk - walk.mean()) / (walk.std() + 1e-9) * voice.f0_range
    semitones = np.interp(np.arange(n_samples) / 800.0, np.arange(n_ctrl), walk)
    f0 = voice.f0 * f0_shift * 2.0 ** (semitones / 12.0)
    phase = np.cumsum(f0 / SR)
    idx = np.nonzero(np.diff(np.floor(phase)) > 0)[0] + 1
    # Jitter moves each pulse independently by a fraction of its period (it does not accumulate).
    idx = idx + np.rint(voice.jitter * SR / f0[idx] * rng.normal(0, 1, len(idx))).astype(np.int64)
    idx = np.clip(idx, 0, n_samples - 1)
    pulses = np.zeros(n_samples)
    pulses[idx] += 1.0 + voice.shimmer * rng.normal(0, 1, len(idx))
    return pulses


def _envelope(formants, bandwidth, freqs):
    """|H(f)| of a cascade of second-order resonances, (frames, bins); unity gain at DC."""
    fr = formants[:, None, :].astype(np.float32)
    bw = (50.0 + 0.06 * fr) * np.float32(bandwidth)
    f = freqs[None, :, None].astype(np.float32)
    mag = fr ** 2 / np.sqrt((fr ** 2 - f ** 2) ** 2 + (bw * f) ** 2)
    return mag.prod(axis=2)


def synthesize(voice, n_samples, rng, f0_shift=1.0, rate_jitter=1.0):
    """Clean speech for `voice`, float32 at 16 kHz, peak-normalised to about 0.5."""
    window = torch.hann_window(N_FFT)
    pulses = torch.from_numpy(_pulse_train(voice, n_samples, rng, f0_shift).astype(np.float32))
    # White noise with the pulse train's power, so breathiness and frication are ratios to voicing.
    noise = torch.from_numpy(rng.standard_normal(n_samples, dtype=np.float32) * np.float32(np.sqrt(voice.f0 / SR)))
    stft = lambda x: torch.stft(x, N_FFT, HOP, window=window, return_complex=True).T  # (frames, bins)
    src, nse = stft(pulses), stft(noise)
    n_frames = src.shape[0]
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SR)
    formants, voicing, frication, band, loud = _phone_track(voice, n_frames, rng, rate_jitter)
    vocal = _envelope(formants, voice.bandwidth, freqs)
    timbre_db = sum(g * np.exp(-0.5 * ((freqs - f) / w) ** 2) for f, w, g in voice.timbre)
    vocal *= (10.0 ** (timbre_db / 20.0))[None, :]
    octaves = np.log2(np.maximum(freqs, 50.0) / 100.0)
    tilt = 10.0 ** ((voice.tilt * octaves - 6.0 * np.maximum(octaves, 0)) / 20.0)  # glottal roll-off + speaker tilt
    lo, hi = band[:, :1], band[:, 1:]
    fric = 1.0 / (1.0 + np.exp(-(freqs[None] - lo) / 150.0)) / (1.0 + np.exp((freqs[None] - hi) / 300.0))
    voiced = vocal * tilt[None] * voicing[:, None]
    unvoiced = vocal * (voice.breathiness * voicing[:, None]) + fric * frication[:, None] * 0.5
    gain = lambda x: torch.from_numpy((x * loud[:, None]).astype(np.float32))
    spec = src * gain(voiced) + nse * gain(unvoiced)
    wave = torch.istft(spec.T, N_FFT, HOP, window=window, length=n_samples).numpy()
    return (0.5 * wave / (np.abs(wave).max() + 1e-9)).astype(np.float32)
