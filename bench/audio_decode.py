#!/usr/bin/env python3
"""Reading VoxCeleb2-style m4a: decode in place through PyAV, or convert to wav first?

    python bench/audio_decode.py [--num-files 200] [--seconds 8] [--nj 2] [--seed 0]

Writes N synthetic 16 kHz mono m4a files (AAC, FFmpeg's encoder at its default bit rate; speech-like: noise
shaped by a few moving resonances under a syllabic envelope) into a temporary directory, then times

  (a) reading them through a wav.scp that points at the m4a files (`AudioReader`, which decodes with PyAV
      in this process): what every avtk command does when given VoxCeleb2's m4a as they are;
  (a2) the same split over --nj processes (as `run.pl JOB=1:nj` runs a command on split wav.scp files);
  (b) converting them to 16-bit wav files with --nj processes (decode with PyAV, write with libsndfile),
      then reading the wavs through a wav.scp (`AudioReader`, libsndfile): total, and reading alone.

The wavs read in (b) must equal the m4a decoded in (a) rounded to 16 bits (checked). Times of reading are
the faster of two runs (the files are in the page cache after they are written either way). Runs in about
20 s with the defaults on 2 cores.
"""
import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avtk.io import media  # noqa: E402
from avtk.io.audio import AudioReader, write_wav  # noqa: E402

SR = 16000


def speech_like(rng, seconds):
    """White noise through three moving resonances, under a 4 Hz syllabic envelope; peak 0.5."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    shape = np.zeros_like(freqs)
    for centre, width in ((rng.uniform(300, 800), 120), (rng.uniform(900, 2200), 200), (rng.uniform(2300, 3500), 300)):
        shape += 1.0 / (1.0 + ((freqs - centre) / width) ** 2)
    x = np.fft.irfft(spectrum * shape, n)
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)), 0.05, None)
    x *= envelope
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def _write_m4a(job):
    path, seed, seconds = job
    media.write_audio(path, speech_like(np.random.default_rng(seed), seconds))


def _convert(job):
    m4a, wav = job
    write_wav(wav, media.decode_audio(m4a))


def _read_all(scp):
    """Read every utterance of a wav.scp; (total samples, {utt: wave} of the first few)."""
    total, some = 0, {}
    for utt, wave in AudioReader(scp):
        total += len(wave)
        if len(some) < 5:
            some[utt] = wave
    return total, some


def _split(scp, nj, directory):
    lines = open(scp).read().splitlines()
    parts = []
    for j in range(nj):
        part = os.path.join(directory, f"split{nj}.{j + 1}.scp")
        with open(part, "w") as f:
            f.write("".join(line + "\n" for line in lines[j::nj]))
        parts.append(part)
    return parts


def clock(function, *args, repeat=1):
    """(result, the fastest of `repeat` wall-clock times)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


def _parallel(pool, function, jobs):
    return list(pool.map(function, jobs, chunksize=max(1, len(jobs) // (8 * pool._max_workers))))


def _du(paths):
    return sum(os.path.getsize(p) for p in paths)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-files", type=int, default=200, help="m4a files to write and read")
    p.add_argument("--seconds", type=float, default=8.0, help="duration of each file")
    p.add_argument("--nj", type=int, default=2, help="processes for the conversion to wav (and for (a2))")
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthetic audio")
    args = p.parse_args()

    import av
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} cores ({usable} usable); PyAV {av.__version__} "
          f"(FFmpeg {av.library_versions['libavcodec']} libavcodec), numpy {np.__version__}")
    hours = args.num_files * args.seconds / 3600

    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.nj) as pool:
        names = [f"id{10000 + i // 20}-vid{i % 20:02d}-{i:05d}" for i in range(args.num_files)]
        m4as = [os.path.join(tmp, "m4a", f"{name}.m4a") for name in names]
        wavs = [os.path.join(tmp, "wav", f"{name}.wav") for name in names]
        _, t_write = clock(_parallel, pool, _write_m4a, [(m, args.seed + i, args.seconds) for i, m in enumerate(m4as)])
        m4a_scp, wav_scp = os.path.join(tmp, "m4a.scp"), os.path.join(tmp, "wav.scp")
        with open(m4a_scp, "w") as f:
            f.write("".join(f"{n} {m}\n" for n, m in zip(names, m4as)))
        with open(wav_scp, "w") as f:
            f.write("".join(f"{n} {w}\n" for n, w in zip(names, wavs)))
        print(f"data: {args.num_files} m4a files x {args.seconds:g} s ({hours * 60:.1f} min), "
              f"{_du(m4as) / 1e6:.1f} MB (written in {t_write:.1f} s with {args.nj} processes)")

        (n_a, some_a), t_a = clock(_read_all, m4a_scp, repeat=2)
        parts = _split(m4a_scp, args.nj, tmp)
        _, t_a2 = clock(_parallel, pool, _read_all, parts, repeat=2)
        _, t_conv = clock(_parallel, pool, _convert, list(zip(m4as, wavs)))
        (n_b, some_b), t_read = clock(_read_all, wav_scp, repeat=2)
        wav_mb = _du(wavs) / 1e6

    assert n_a == n_b == int(args.num_files * round(args.seconds * SR)), (n_a, n_b)
    diff = max(float(np.abs(np.round(some_a[k] * 32768) / 32768 - some_b[k]).max()) for k in some_a)
    ok = diff <= 1.0 / 32768
    print(f"wav read in (b) = m4a decoded in (a), rounded to 16 bits: max |difference| {diff:.2e} "
          f"({'ok' if ok else 'FAIL'}); wav files {wav_mb:.1f} MB")
    print()
    t_b = t_conv + t_read
    rows = [
        ("(a) decode m4a in process, 1 process", t_a, 1),
        (f"(a2) decode m4a, {args.nj} processes", t_a2, args.nj),
        (f"(b) convert to wav, {args.nj} processes", t_conv, args.nj),
        ("(b) then read the wavs, 1 process", t_read, 1),
        ("(b) total", t_b, None),
    ]
    print(f"{'':40s} {'time':>8s} {'per file':>9s} {'x real time':>12s} {'/ (a)':>7s}")
    for name, t, _ in rows:
        print(f"{name:40s} {t:7.2f}s {1000 * t / args.num_files:7.1f}ms {hours * 3600 / t:11.0f}x {t / t_a:7.2f}")
    print(f"reading: the faster of 2 runs. Read-only wav vs in-process m4a decode: {t_a / t_read:.1f}x faster "
          f"per pass; the conversion pays for itself after {t_conv / max(t_a - t_read, 1e-9):.1f} passes.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
