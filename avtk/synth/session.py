"""Session variability of the audio: channel colouring, reverberation, additive noise and level."""
from dataclasses import dataclass

import numpy as np

SR = 16000


@dataclass
class AudioSession:
    """What one "video" does to every utterance recorded in it."""
    eq_freqs: np.ndarray   # centre frequencies (Hz) of random peaking bands
    eq_gains: np.ndarray   # their gains (dB)
    eq_widths: np.ndarray  # their widths (octaves)
    lowpass: float         # band limit of the channel (Hz)
    highpass: float
    rt60: float            # reverberation time (s), 0 = dry
    snr: float             # speech-to-noise ratio (dB)
    noise_slope: float     # noise spectral slope (dB/octave)
    gain: float


def sample_audio_session(rng, strength=1.0):
    n_bands = 4
    return AudioSession(
        eq_freqs=np.exp(rng.uniform(np.log(150), np.log(6000), n_bands)),
        eq_gains=rng.normal(0, 2.0 * strength, n_bands),
        eq_widths=rng.uniform(0.5, 2.0, n_bands),
        lowpass=float(rng.choice([3400.0, 5500.0, 7600.0], p=[0.05, 0.15, 0.8])),
        highpass=float(rng.uniform(50, 150)),
        rt60=float(rng.uniform(0.15, 0.6)) if rng.random() < 0.3 else 0.0,
        snr=float(rng.uniform(25, 45)),
        noise_slope=float(rng.uniform(-4, 0)),
        gain=float(np.exp(rng.normal(0, 0.4))),
    )


def channel_response(session, freqs):
    """The channel's magnitude response at `freqs`."""
    octaves = np.log2(np.maximum(freqs, 1.0)[:, None] / session.eq_freqs[None, :])
    db = (session.eq_gains[None, :] * np.exp(-0.5 * (octaves / (0.5 * session.eq_widths[None, :])) ** 2)).sum(1)
    mag = 10.0 ** (db / 20.0)
    mag /= 1.0 + (freqs / session.lowpass) ** 8  # band limit
    mag *= 1.0 / (1.0 + (session.highpass / np.maximum(freqs, 1.0)) ** 4)
    return mag


def room_impulse_response(rt60, rng):
    """Exponentially decaying noise with a direct path, unit energy."""
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    rir = rng.normal(0, 1, n) * np.exp(-6.9 * t / rt60) * 0.3
    rir[0] = 1.0
    return rir / np.sqrt((rir ** 2).sum())


def apply_session(wave, session, rng):
    """Colour, reverberate, add noise at the session's SNR (jittered per utterance) and scale."""
    n = len(wave)
    rir = room_impulse_response(session.rt60, rng) if session.rt60 > 0 else np.ones(1)
    n_fft = 1 << int(np.ceil(np.log2(n + len(rir))))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SR)
    colour = channel_response(session, freqs) * 10.0 ** (rng.normal(0, 1.0, 1) / 20.0)
    spec = np.fft.rfft(wave, n_fft) * np.fft.rfft(rir, n_fft) * colour
    speech = np.fft.irfft(spec, n_fft)[:n]
    slope = 10.0 ** (session.noise_slope * np.log2(np.maximum(freqs, 50.0) / 1000.0) / 20.0)
    noise = np.fft.irfft(np.fft.rfft(rng.normal(0, 1, n_fft)) * slope * colour, n_fft)[:n]
    snr = session.snr + rng.normal(0, 2.0)
    p_speech, p_noise = np.mean(speech ** 2) + 1e-12, np.mean(noise ** 2) + 1e-12
    mixed = speech + noise * np.sqrt(p_speech / p_noise * 10.0 ** (-snr / 10.0))
    # Self-noise 45 dB down and room rumble (mostly below 300 Hz) 25 dB down, as in real recordings, so that
    # no band is empty (an empty band's log energy is float rounding noise in any fbank implementation).
    rumble = np.fft.irfft(np.fft.rfft(rng.normal(0, 1, n_fft)) / (1.0 + (freqs / 300.0) ** 2), n_fft)[:n]
    rumble *= np.sqrt(p_speech * 10 ** -2.5 / (np.mean(rumble ** 2) + 1e-12))
    mixed += rumble + rng.normal(0, np.sqrt(p_speech * 10 ** -4.5), n)
    mixed *= session.gain * 0.25 / (np.sqrt(np.mean(mixed ** 2)) * 4 + 1e-9)
    peak = np.abs(mixed).max()
    if peak > 0.99:
        mixed *= 0.99 / peak
    return mixed.astype(np.float32)
