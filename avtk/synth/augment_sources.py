"""Synthetic stand-ins for MUSAN (noise, music, speech) and simulated RIRs, for the mini recipe and tests.

Every file has its own random stream keyed by (seed, AUG_KEY, category, index); the corpus (avtk.synth.corpus)
keys its streams by (seed, k, ...) with small k, so the babble talkers are not corpus speakers.
"""
import logging
from pathlib import Path

import numpy as np

from avtk.data.table import utt2spk_to_spk2utt, write_dict
from avtk.errors import AvtkError
from avtk.io.audio import SAMPLE_RATE, write_wav

log = logging.getLogger(__name__)

AUG_KEY = 7177
SR = SAMPLE_RATE
CATEGORIES = ("noise", "music", "speech", "rirs")


def _rng(seed, category, index):
    return np.random.default_rng([seed, AUG_KEY, CATEGORIES.index(category), index])


def _duration_samples(rng, low, high):
    """A duration uniform in [low, high] s, rounded to 10 ms, in samples."""
    return int(round(round(float(rng.uniform(low, high)), 2) * SR))


def _shape_spectrum(white, slope_db_per_octave, f_ref=1000.0):
    spec = np.fft.rfft(white)
    freqs = np.maximum(np.fft.rfftfreq(len(white), 1.0 / SR), 20.0)
    spec *= 10.0 ** (slope_db_per_octave * np.log2(freqs / f_ref) / 20.0)
    spec[0] = 0.0
    return np.fft.irfft(spec, len(white))


def _bandpass(x, low, high):
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1.0 / SR)
    spec *= 1.0 / (1.0 + (low / np.maximum(freqs, 1.0)) ** 4) / (1.0 + (freqs / high) ** 4)
    return np.fft.irfft(spec, len(x))


def _unit_rms(x):
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def _smooth_envelope(rng, n, rate_hz, depth):
    """A positive random envelope varying at about rate_hz, log-depth `depth` (nepers)."""
    n_ctrl = max(2, int(n / SR * rate_hz) + 2)
    ctrl = rng.normal(0, 1, n_ctrl)
    return np.exp(depth * np.interp(np.arange(n) / SR * rate_hz, np.arange(n_ctrl), ctrl))


def _to_level(x, rms, peak=0.99):
    x = _unit_rms(x) * rms
    top = np.abs(x).max()
    return x * (peak / top) if top > peak else x


NOISE_KINDS = ("coloured", "hum", "clicks", "wind")


def synth_noise(rng, n, kind=None):
    """One noise recording of a kind in NOISE_KINDS (index or name; None: drawn): coloured stationary noise,
    mains hum, clicks over a bed, or wind-like gusts."""
    kind = int(rng.integers(len(NOISE_KINDS))) if kind is None else (
        NOISE_KINDS.index(kind) if isinstance(kind, str) else int(kind) % len(NOISE_KINDS))
    t = np.arange(n) / SR
    bed = _unit_rms(_shape_spectrum(rng.standard_normal(n), rng.uniform(-6.0, 0.0)))
    if kind == 0:  # coloured stationary noise (white .. brown-ish), with a random spectral bump
        x = _shape_spectrum(rng.standard_normal(n), rng.uniform(-6.0, 1.0))
        centre = np.exp(rng.uniform(np.log(200), np.log(5000)))
        x = _unit_rms(x) + rng.uniform(0.2, 1.0) * _unit_rms(_bandpass(rng.standard_normal(n), centre / 1.5,
                                                                        centre * 1.5))
    elif kind == 1:  # mains hum: 50/60 Hz and harmonics, slowly wavering, over a faint bed
        f0 = float(rng.choice([50.0, 60.0])) * rng.uniform(0.995, 1.005)
        x = np.zeros(n)
        for k in range(1, int(rng.integers(4, 12))):
            x += rng.uniform(0.1, 1.0) / k ** rng.uniform(0.3, 1.2) * np.sin(2 * np.pi * f0 * k * t
                                                                              + rng.uniform(0, 2 * np.pi))
        x = _unit_rms(x) * _smooth_envelope(rng, n, 2.0, 0.1) + rng.uniform(0.1, 0.4) * bed
    elif kind == 2:  # clicks / taps: decaying filtered bursts at random times over a bed
        x = rng.uniform(0.2, 0.5) * bed
        n_clicks = max(1, int(rng.uniform(2, 15) * n / SR))
        for at in rng.integers(0, n, n_clicks):
            length = int(rng.uniform(0.003, 0.03) * SR)
            burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 5.0))
            burst = _bandpass(burst, rng.uniform(300, 2000), rng.uniform(3000, 7500))
            end = min(n, at + length)
            x[at:end] += rng.uniform(1.0, 6.0) * _unit_rms(burst)[:end - at]
    else:  # wind-like gusts: low-passed noise under a slow, deep random envelope
        x = _bandpass(rng.standard_normal(n), 20.0, rng.uniform(300, 1500))
        x = _unit_rms(x) * _smooth_envelope(rng, n, rng.uniform(0.5, 2.0), rng.uniform(0.3, 0.6))
        x += rng.uniform(0.1, 0.3) * bed
    return _to_level(x, rng.uniform(0.08, 0.15)).astype(np.float32)


def _note(rng, freq, length, n_harmonics, brightness, attack, decay):
    t = np.arange(length) / SR
    vibrato = 1.0 + rng.uniform(0, 0.004) * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
    phase = 2 * np.pi * freq * np.cumsum(vibrato) / SR
    k = np.arange(1, n_harmonics + 1)
    k = k[k * freq < 7500]
    amps = k ** -brightness * rng.uniform(0.6, 1.0, len(k))
    tone = (amps[:, None] * np.sin(k[:, None] * phase[None, :])).sum(0)
    env = np.minimum(1.0, t / attack) * np.exp(-t / decay)
    release = min(length, int(0.02 * SR))
    env[length - release:] *= np.linspace(1.0, 0.0, release)
    return tone * env


def synth_music(rng, n):
    """One piece of tonal music: a melody over chords of harmonic notes with envelopes, maybe percussion."""
    bpm = rng.uniform(60, 160)
    beat = int(60.0 / bpm * SR)
    root = 110.0 * 2.0 ** (rng.integers(0, 12) / 12.0)
    scale = np.array([0, 2, 4, 7, 9] if rng.random() < 0.5 else [0, 3, 5, 7, 10])  # pentatonic
    timbre = dict(n_harmonics=int(rng.integers(3, 12)), brightness=rng.uniform(0.8, 2.0))
    x = np.zeros(n + 8 * beat)
    chord_steps = [0, 2, 4]
    pos = 0
    while pos < n:  # chords: one per bar of 4 beats
        degree = int(rng.integers(len(scale)))
        bar = 4 * beat
        for step in chord_steps:
            idx = degree + step
            semis = scale[idx % len(scale)] + 12 * (idx // len(scale))
            x[pos:pos + bar] += 0.35 * _note(rng, root * 2.0 ** (semis / 12.0), bar, attack=0.03,
                                             decay=rng.uniform(0.5, 2.0), **timbre)
        pos += bar
    pos = 0
    while pos < n:  # melody: notes of 1/2, 1 or 2 beats, an octave up
        length = int(beat * rng.choice([0.5, 1.0, 2.0]))
        if rng.random() < 0.85:
            idx = int(rng.integers(0, 2 * len(scale)))
            semis = 12 + scale[idx % len(scale)] + 12 * (idx // len(scale))
            x[pos:pos + length] += _note(rng, root * 2.0 ** (semis / 12.0), length, attack=rng.uniform(0.005, 0.03),
                                         decay=rng.uniform(0.15, 0.8), **timbre)
        pos += length
    if rng.random() < 0.6:  # percussion: a kick on beats 1 and 3, a hi-hat on every half beat
        kick_len, hat_len = int(0.15 * SR), int(0.05 * SR)
        t = np.arange(kick_len) / SR
        kick = np.sin(2 * np.pi * np.cumsum(50.0 + 100.0 * np.exp(-t / 0.02)) / SR) * np.exp(-t / 0.05)
        hat = _bandpass(rng.standard_normal(hat_len), 6000.0, 7900.0)
        hat = _unit_rms(hat) * np.exp(-np.arange(hat_len) / (0.01 * SR)) * 0.3
        for b, at in enumerate(range(0, n, beat // 2)):
            if b % 4 == 0:
                x[at:at + kick_len] += 0.8 * kick
            x[at:at + hat_len] += hat * rng.uniform(0.5, 1.0)
    return _to_level(x[:n], rng.uniform(0.08, 0.15)).astype(np.float32)


def synth_speech(rng, n):
    """One babble talker: a voice of its own (avtk.synth.voice) speaking random phone-like content."""
    from avtk.synth import voice

    talker = voice.sample_voice(rng)
    wave = voice.synthesize(talker, n, rng, f0_shift=float(np.exp(rng.normal(0, 0.04))))
    return _to_level(wave.astype(np.float64), rng.uniform(0.08, 0.15)).astype(np.float32)


def synth_rir(rng):
    """A simulated room impulse response: a direct path after the source-microphone delay, early reflections
    and an exponentially decaying diffuse tail (high frequencies decaying faster), RT60 0.2–0.9 s, 0.3–1.0 s
    long, peak 0.9. Returns (rir float32, rt60)."""
    rt60 = float(rng.uniform(0.2, 0.9))
    n = int(round(float(np.clip(rt60 * rng.uniform(0.8, 1.3), 0.3, 1.0)) * 100)) * SR // 100
    rir = np.zeros(n)
    distance = rng.uniform(0.5, 4.0)  # m
    direct = int(round(distance / 343.0 * SR))
    rir[direct] = 1.0 / distance
    # Early reflections: paths 0.5-15 m longer than the direct one, each attenuated by its length and walls.
    n_early = int(rng.integers(6, 20))
    extra = np.sort(rng.uniform(0.5, 15.0, n_early))
    delays = direct + np.round(extra / 343.0 * SR).astype(int)
    absorb = rng.uniform(0.5, 0.9, n_early) ** rng.integers(1, 4, n_early)
    amps = absorb / (distance + extra) * rng.choice([-1.0, 1.0], n_early)
    np.add.at(rir, delays[delays < n], amps[delays < n])
    # Diffuse tail: noise under exp(-6.9 t / RT60) (60 dB at RT60), two bands with their own decay, from the
    # first reflection on, with a 10-30 ms onset ramp; its energy relative to the direct path is the DRR.
    t = np.arange(n) / SR
    onset = direct + int(rng.uniform(0.002, 0.01) * SR)
    ramp = np.clip((np.arange(n) - onset) / (rng.uniform(0.01, 0.03) * SR), 0.0, 1.0)
    low = _bandpass(rng.standard_normal(n), 20.0, 2000.0) * np.exp(-6.9 * t / rt60)
    high = _bandpass(rng.standard_normal(n), 2000.0, 7800.0) * np.exp(-6.9 * t / (rt60 * rng.uniform(0.4, 0.8)))
    tail = (low + high) * ramp
    drr_db = rng.uniform(-6.0, 8.0)
    direct_energy = rir[direct] ** 2
    tail *= np.sqrt(direct_energy * 10.0 ** (-drr_db / 10.0) / (np.sum(tail ** 2) + 1e-12))
    rir += tail
    return (0.9 * rir / np.abs(rir).max()).astype(np.float32), rt60


def make_augment_sources(out_dir, data_dir, seed=0, num_noise=20, num_music=10, num_speech=20, num_rirs=30):
    """Write synthetic noise, music, babble speech and RIRs under out_dir/{noise,music,speech,rirs}/ and the
    data dirs data_dir/{musan_noise,musan_music,musan_speech,rirs} (wav.scp, utt2spk with each file its own
    speaker, spk2utt, utt2dur). Returns {data dir name: number of files}."""
    out, data = Path(out_dir), Path(data_dir)
    plan = [  # noise kinds take turns, so every kind is present
        ("noise", "musan_noise", num_noise, lambda rng, i: synth_noise(rng, _duration_samples(rng, 3.0, 8.0), i)),
        ("music", "musan_music", num_music, lambda rng, i: synth_music(rng, _duration_samples(rng, 5.0, 10.0))),
        ("speech", "musan_speech", num_speech, lambda rng, i: synth_speech(rng, _duration_samples(rng, 3.0, 8.0))),
        ("rirs", "rirs", num_rirs, lambda rng, i: synth_rir(rng)[0]),
    ]
    counts = {}
    for category, name, count, make in plan:
        if count < 1:
            raise AvtkError(f"need at least one {category} file, got {count}")
        prefix = {"rirs": "rir"}.get(category, category)
        wav_scp, utt2dur = {}, {}
        for i in range(count):
            utt = f"{prefix}-{i + 1:04d}"
            wave = make(_rng(seed, category, i), i)
            path = out / category / f"{utt}.wav"
            write_wav(path, wave)
            wav_scp[utt] = str(path.resolve())
            utt2dur[utt] = f"{len(wave) / SR:.2f}"
        utt2spk = {utt: utt for utt in wav_scp}
        write_dict(data / name / "wav.scp", wav_scp)
        write_dict(data / name / "utt2spk", utt2spk)
        write_dict(data / name / "spk2utt", utt2spk_to_spk2utt(utt2spk))
        write_dict(data / name / "utt2dur", utt2dur)
        counts[name] = count
        log.info("wrote %d %s files to %s and %s", count, category, out / category, data / name)
    return counts
