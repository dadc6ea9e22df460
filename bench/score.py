#!/usr/bin/env python3
"""Speed of `avtk score` on a VoxCeleb1-E-sized job, against a straightforward per-trial implementation.

    python bench/score.py [--seed 0] [--peer-trials 2000]

Builds the job in memory (nothing large is written to disk): 145,160 unit embeddings of dimension 192 from
1,251 speakers, 579,818 trials (half target), and an AS-Norm cohort of 5,994 speaker means; then times

  (a) avtk.scoring.score_trials (mean subtraction, cosine, AS-Norm top 300) on all trials;
  (b) the peer: a per-trial Python loop (each side's cohort scores computed and sorted for every trial), on a
      random subset of trials, extrapolated to all of them; the two must agree on that subset within 1e-5;
  (c) avtk.metrics.eer + min_dcf (p = 0.01 and 0.05) on all the scores;
  (d) reading the embeddings with avtk.io.ark.load_table, measured on a 10,000-utterance ark in a temporary
      directory (7.7 MB) and extrapolated.

avtk times are the faster of two runs (the machine may be shared). Runs in about a minute on 2 cores.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avtk.data.trials import Trials  # noqa: E402
from avtk.io.ark import load_table, open_writer  # noqa: E402
from avtk.metrics import eer, min_dcf  # noqa: E402
from avtk.scoring import cohort_stats, make_cohort, score_trials, table_mean, unit  # noqa: E402

N_UTTS, DIM, N_TRIALS, N_SPK, N_COHORT, TOP_N = 145_160, 192, 579_818, 1_251, 5_994, 300


def make_job(seed):
    """(table, trials, cohort_table): speaker-structured unit vectors with a shared offset, as real
    embeddings have; the cohort is one mean per (different) training speaker."""
    rng = np.random.default_rng(seed)
    offset = rng.standard_normal(DIM).astype(np.float32) * 0.08
    speakers = unit(rng.standard_normal((N_SPK, DIM)).astype(np.float32))
    owner = np.sort(rng.integers(0, N_SPK, N_UTTS))
    emb = unit(speakers[owner] + 1.6 * unit(rng.standard_normal((N_UTTS, DIM)).astype(np.float32)) + offset)
    keys = [f"id{10000 + s}-utt{i:06d}" for i, s in enumerate(owner)]
    table = {k: emb[i] for i, k in enumerate(keys)}
    # Trials: half target (two utterances of one speaker), half non-target (two random utterances).
    first = np.searchsorted(owner, np.arange(N_SPK))
    count = np.bincount(owner, minlength=N_SPK)
    n_tar = N_TRIALS // 2
    e_tar = rng.integers(0, N_UTTS, n_tar)
    s = owner[e_tar]
    t_tar = first[s] + (e_tar - first[s] + 1 + rng.integers(0, np.maximum(count[s] - 1, 1))) % count[s]
    e_non = rng.integers(0, N_UTTS, N_TRIALS - n_tar)
    t_non = rng.integers(0, N_UTTS, N_TRIALS - n_tar)
    ei, ti = np.r_[e_tar, e_non], np.r_[t_tar, t_non]
    labels = (owner[ei] == owner[ti]).astype(np.int8)
    order = rng.permutation(N_TRIALS)
    trials = Trials([keys[i] for i in ei[order]], [keys[i] for i in ti[order]], labels[order])
    cohort_spk = unit(rng.standard_normal((N_COHORT, DIM)).astype(np.float32) + offset)
    cohort_table = {f"spk{j:05d}": cohort_spk[j] for j in range(N_COHORT)}
    return table, trials, cohort_table


def peer_scores(table, trials, idx, mean, cohort, top_n):
    """The straightforward implementation: one trial at a time, no statistics cached."""
    out = []
    for i in idx:
        e = table[trials.enroll[i]] - mean
        t = table[trials.test[i]] - mean
        e = e / np.linalg.norm(e)
        t = t / np.linalg.norm(t)
        s = float(e @ t)
        top_e = np.sort(cohort @ e)[-top_n:]
        top_t = np.sort(cohort @ t)[-top_n:]
        out.append(((s - top_e.mean()) / top_e.std(ddof=1) + (s - top_t.mean()) / top_t.std(ddof=1)) / 2)
    return np.array(out)


def clock(function, *args, repeat=1, **kwargs):
    """(result, the fastest of `repeat` wall-clock times)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return result, best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthetic job")
    p.add_argument("--peer-trials", type=int, default=2000, help="trials the per-trial peer scores")
    args = p.parse_args()

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    print(f"machine: {os.cpu_count()} cores ({usable} usable), torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, numpy {np.__version__}")
    (table, trials, cohort_table), t_make = clock(make_job, args.seed)
    print(f"job: {N_UTTS:,} embeddings x {DIM}, {N_TRIALS:,} trials, cohort {N_COHORT:,} speakers, "
          f"top {TOP_N} (built in {t_make:.1f} s)")

    mean = table_mean(table)
    _, cohort = make_cohort(cohort_table, mean)
    scores, t_avtk = clock(score_trials, table, trials, mean, cohort, TOP_N, repeat=2)
    whole = unit(np.stack(list(table.values())) - mean)
    _, t_stats = clock(cohort_stats, whole, cohort, TOP_N, repeat=2)
    raw, t_cos = clock(score_trials, table, trials, mean, repeat=2)

    rng = np.random.default_rng(args.seed + 1)
    idx = np.sort(rng.choice(N_TRIALS, args.peer_trials, replace=False))
    peer, t_peer = clock(peer_scores, table, trials, idx, mean.astype(np.float64),
                         cohort.astype(np.float64), TOP_N)
    t_peer_all = t_peer * N_TRIALS / len(idx)
    diff = float(np.abs(peer - scores[idx]).max())

    def metrics(x):
        return eer(x, trials.labels), min_dcf(x, trials.labels, 0.01), min_dcf(x, trials.labels, 0.05)

    (e_norm, d1, d5), t_metrics = clock(metrics, scores, repeat=2)
    e_raw = eer(raw, trials.labels)[0]

    n_read = 10_000
    with tempfile.TemporaryDirectory() as tmp:
        with open_writer(f"ark,scp:{tmp}/e.ark,{tmp}/e.scp") as w:
            for k in list(table)[:n_read]:
                w[k] = table[k]
        _, t_read = clock(load_table, f"scp:{tmp}/e.scp", repeat=2)
    t_read_all = t_read * N_UTTS / n_read

    print(f"peer and avtk agree on {len(idx):,} trials: max |difference| {diff:.2e} "
          f"({'ok' if diff <= 1e-5 else 'FAIL'} at 1e-5)")
    print(f"EER {100 * e_raw:.2f} % cosine, {100 * e_norm[0]:.2f} % AS-Norm; "
          f"minDCF {d1[0]:.4f} (p=0.01), {d5[0]:.4f} (p=0.05)")
    print()
    rows = [
        ("scoring + AS-Norm, all trials", f"{t_peer_all:.1f} s*", f"{t_avtk:.2f} s", f"{t_peer_all / t_avtk:.0f}x"),
        ("  of which cohort statistics", "", f"{t_stats:.2f} s", ""),
        ("  cosine only (no AS-Norm)", "", f"{t_cos:.2f} s", ""),
        ("eer + min_dcf x2, all scores", "", f"{t_metrics:.2f} s", ""),
        (f"load_table, {N_UTTS:,} embeddings", "", f"{t_read_all:.1f} s*", ""),
    ]
    print(f"{'':32s} {'peer':>12s} {'avtk':>10s} {'ratio':>8s}")
    for name, a, b, c in rows:
        print(f"{name:32s} {a:>12s} {b:>10s} {c:>8s}")
    print("avtk times: the faster of 2 runs. "
          f"* extrapolated: peer from {len(idx):,} trials ({t_peer:.1f} s), load_table from {n_read:,} "
          f"embeddings ({t_read:.2f} s)")
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
