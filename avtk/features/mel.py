"""Mel filter banks."""
import torch


def hz_to_mel_htk(hz):
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz_htk(mel):
    return 700.0 * (10.0 ** (torch.as_tensor(mel, dtype=torch.float64) / 2595.0) - 1.0)


def htk_mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max):
    """(n_fft//2+1, n_mels) triangular filters equally spaced on the HTK mel scale, peak 1, not area-normalised."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz_htk(torch.linspace(float(hz_to_mel_htk(f_min)), float(hz_to_mel_htk(f_max)), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rise = (freqs[:, None] - lower) / (centre - lower)
    fall = (upper - freqs[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rise, fall), min=0.0).float()


def log_mel(wave, sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=80, f_min=20.0, f_max=7600.0):
    """Plain log power mel spectrogram (frames, n_mels) of a 1-D float waveform, Hamming window."""
    wave = torch.as_tensor(wave, dtype=torch.float32)
    spec = torch.stft(wave, n_fft, hop_length, win_length, window=torch.hamming_window(win_length),
                      center=True, pad_mode="reflect", return_complex=True).abs() ** 2
    mel = spec.T @ htk_mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max)
    return torch.log(mel + 1e-6)
