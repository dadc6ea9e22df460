#!/usr/bin/env python3
"""Speed of avtk's KaldiFbank against kaldi-native-fbank (and torchaudio's Kaldi fbank where installed).

    python bench/fbank.py [--num-utts 200] [--min-seconds 2] [--max-seconds 20] [--repeat 5] [--seed 0] [--quick]

Synthesises N utterances of speech-like audio with avtk's source-filter voice (avtk.synth.voice; one random
voice per utterance, lengths uniform in [min, max] s, 16 kHz, rounded to 16 bits as a wav file would hold
them), then computes Kaldi's default 80-bin fbank (25/10 ms, Povey window, snip-edges, dither 0) of every
utterance with

  (a) kaldi-native-fbank (OnlineFbank: accept_waveform, input_finished, get_frame for every frame), one
      utterance at a time; it holds the GIL, so with 2 cores it runs in 2 processes (each half the list);
  (b) avtk.features.KaldiFbank one utterance at a time (batch of 1), under torch.inference_mode;
  (c) avtk.features.KaldiFbank in padded batches the way `avtk compute-fbank` forms them (--batch-size
      utterances, sorted by length within a read-ahead window of 8 batches);
  (d) torchaudio.compliance.kaldi.fbank one utterance at a time, if torchaudio imports;

each with torch.set_num_threads(1) and with 2 threads (kaldi-native-fbank: 1 process, then 2). Times are the
median of --repeat runs, the variants taking turns (the machine may be shared: the load average is printed
before and after; 2 threads on 2 busy cores can be many times slower than 1). Every avtk variant is checked
against kaldi-native-fbank the way tests/test_fbank.py checks it: max |difference| on the values above float32
resolution (ln(bin / frame mel energy) > -18), which must be <= 1e-3, and the max over all values.
Runs in about 2 minutes with the defaults on 2 cores (--quick: 20 utterances, 2 repeats, seconds).
"""
import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avtk.features import KaldiFbank  # noqa: E402
from avtk.synth import voice  # noqa: E402
from timing import round_robin  # noqa: E402  (bench/timing.py)

SR = 16000
TOL = 1e-3  # tests/test_fbank.py: resolved values agree within this
RESOLVED_LOG_RATIO = -18.0

_WAVES = []  # the utterances, inherited by forked knf worker processes


def make_waves(n, lo, hi, seed):
    rng = np.random.default_rng(seed)
    waves = []
    for _ in range(n):
        samples = int(rng.uniform(lo, hi) * SR)
        w = voice.synthesize(voice.sample_voice(rng), samples, rng)
        waves.append((np.round(w * 32768.0) / 32768.0).astype(np.float32))
    return waves


def _knf_options():
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.window_type = "povey"
    opts.mel_opts.num_bins = 80
    return opts


def knf_one(opts, wave):
    import kaldi_native_fbank as knf

    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SR, wave * np.float32(32768.0))
    fbank.input_finished()
    n = fbank.num_frames_ready
    return np.array([fbank.get_frame(i) for i in range(n)], np.float32).reshape(n, 80)


def knf_all(waves):
    opts = _knf_options()
    return [knf_one(opts, w) for w in waves]


def _knf_part(indices):
    opts = _knf_options()
    return sum(len(knf_one(opts, _WAVES[i])) for i in indices)


def knf_processes(pool, nj):
    """The features stay in the workers; each returns its frame count."""
    order = sorted(range(len(_WAVES)), key=lambda i: -len(_WAVES[i]))
    return sum(pool.map(_knf_part, [order[j::nj] for j in range(nj)]))


def avtk_per_utt(fe, waves):
    out = []
    with torch.inference_mode():
        for w in waves:
            feats, _ = fe(torch.from_numpy(w)[None])
            out.append(feats[0].numpy())
    return out


def avtk_batched(fe, waves, batch_size):
    """Batches as `avtk compute-fbank` forms them: sorted by length within windows of 8 batches."""
    out = [None] * len(waves)
    window = batch_size * 8
    with torch.inference_mode():
        for w0 in range(0, len(waves), window):
            idx = sorted(range(w0, min(w0 + window, len(waves))), key=lambda i: len(waves[i]))
            for b in range(0, len(idx), batch_size):
                batch = idx[b:b + batch_size]
                lengths = torch.tensor([len(waves[i]) for i in batch])
                padded = np.zeros((len(batch), int(lengths.max())), np.float32)
                for j, i in enumerate(batch):
                    padded[j, :len(waves[i])] = waves[i]
                feats, frames = fe(torch.from_numpy(padded), lengths)
                for j, i in enumerate(batch):
                    out[i] = feats[j, :frames[j]].numpy()
    return out


def torchaudio_per_utt(waves):
    from torchaudio.compliance import kaldi

    with torch.inference_mode():
        return [kaldi.fbank(torch.from_numpy(w)[None] * 32768.0, num_mel_bins=80, dither=0.0,
                            sample_frequency=SR).numpy() for w in waves]


def parity(ours, refs):
    """(max |diff| on resolved values, max |diff| over all, fraction of values resolved)."""
    worst_resolved, worst, resolved_n, total = 0.0, 0.0, 0, 0
    for a, r in zip(ours, refs):
        assert a.shape == r.shape, (a.shape, r.shape)
        diff = np.abs(a.astype(np.float64) - r)
        log_ratio = r - np.log(np.exp(r.astype(np.float64)).sum(axis=1, keepdims=True))
        resolved = log_ratio > RESOLVED_LOG_RATIO
        if resolved.any():
            worst_resolved = max(worst_resolved, float(diff[resolved].max()))
        worst = max(worst, float(diff.max()))
        resolved_n += int(resolved.sum())
        total += resolved.size
    return worst_resolved, worst, resolved_n / max(total, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-utts", type=int, default=200, help="utterances")
    p.add_argument("--min-seconds", type=float, default=2.0, help="shortest utterance")
    p.add_argument("--max-seconds", type=float, default=20.0, help="longest utterance")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per variant (the median is reported)")
    p.add_argument("--batch-size", type=int, default=16, help="utterances per avtk batch (compute-fbank's default)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthetic audio")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 utterances, 2 repeats")
    args = p.parse_args()
    if args.quick:
        args.num_utts, args.repeat = 20, 2

    import kaldi_native_fbank as knf

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        import torchaudio  # noqa: F401
        ta_note = f"torchaudio {torchaudio.__version__}"
    except Exception as err:  # noqa: BLE001 (any import failure means: not available)
        torchaudio = None
        ta_note = f"torchaudio not available ({type(err).__name__}: {err}); its row is skipped"
    load0 = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores ({usable} usable), load average {load0[0]:.2f} {load0[1]:.2f} "
          f"{load0[2]:.2f}; torch {torch.__version__}, kaldi-native-fbank {getattr(knf, '__version__', '?')}")
    print(ta_note)

    start = time.perf_counter()
    torch.set_num_threads(1)
    waves = make_waves(args.num_utts, args.min_seconds, args.max_seconds, args.seed)
    _WAVES[:] = waves
    audio_s = sum(len(w) for w in waves) / SR
    print(f"data: {len(waves)} utterances of {args.min_seconds:g}-{args.max_seconds:g} s, {audio_s / 60:.1f} min "
          f"of audio (synthesised in {time.perf_counter() - start:.1f} s); 80 bins, 25/10 ms, povey, snip-edges; "
          f"median of {args.repeat} runs")

    fe = KaldiFbank(num_mel_bins=80, dither=0.0)
    refs = knf_all(waves)
    checks = {"per utterance": parity(avtk_per_utt(fe, waves), refs),
              "batched": parity(avtk_batched(fe, waves, args.batch_size), refs)}
    if torchaudio is not None:
        checks["torchaudio"] = parity(torchaudio_per_utt(waves), refs)
    rows = []  # (name, threads, seconds, peer seconds or None, parity or None)
    nj = 2
    with ProcessPoolExecutor(nj) as pool:  # forked now, after _WAVES is filled
        assert knf_processes(pool, nj) == sum(len(r) for r in refs)  # also starts the workers
        for threads in (1, 2):
            torch.set_num_threads(threads)
            if threads == 1:
                peer = ("kaldi-native-fbank, per utterance", lambda: knf_all(waves))
            else:
                peer = (f"kaldi-native-fbank, {nj} processes", lambda: knf_processes(pool, nj))
            runs = [peer,
                    ("avtk KaldiFbank, per utterance", lambda: avtk_per_utt(fe, waves), checks["per utterance"]),
                    (f"avtk KaldiFbank, batches of {args.batch_size}",
                     lambda: avtk_batched(fe, waves, args.batch_size), checks["batched"])]
            if torchaudio is not None:
                runs.append(("torchaudio kaldi.fbank, per utterance", lambda: torchaudio_per_utt(waves),
                             checks["torchaudio"]))
            avtk_per_utt(fe, waves[:5])  # warm up the thread pool
            times = round_robin([run[1] for run in runs], args.repeat)
            rows.append((peer[0], threads, times[0], None, None))
            rows += [(name, threads, t, times[0], check) for (name, _, check), t in zip(runs[1:], times[1:])]

    load1 = os.getloadavg()
    print()
    print(f"{'':38s} {'threads':>7s} {'total':>8s} {'per utt':>8s} {'x real time':>11s} {'knf/this':>8s} "
          f"{'|diff| resolved':>15s} {'all':>7s}")
    ok = True
    for name, threads, t, t_peer, par in rows:
        ratio = f"{t_peer / t:7.2f}x" if t_peer else ""
        if par:
            ok &= par[0] <= TOL
            diffs = f"{par[0]:15.1e} {par[1]:7.1e}"
        else:
            diffs = ""
        print(f"{name:38s} {threads:7d} {t:7.2f}s {1000 * t / len(waves):6.2f}ms {audio_s / t:10.0f}x {ratio:>8s} "
              f"{diffs}")
    resolved = rows[1][4][2]
    print(f"|diff|: against kaldi-native-fbank; {100 * resolved:.3f} % of values are above float32 resolution "
          f"(the rest hold rounding noise in both). Parity {'ok' if ok else 'FAIL'} at {TOL:g}. "
          f"Load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; whole run "
          f"{time.perf_counter() - start:.0f} s.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
