#!/usr/bin/env python3
"""A Vox1-O-sized evaluation end to end: avtk's commands against the seed's procedure written plainly.

    python bench/vox1o.py --device cuda            # the GPU job: 4,708 utterances, 37,611 trials
    python bench/vox1o.py --quick                  # a CPU check of the script: 40 utterances, 300 trials

Writes a VoxCeleb1-O-shaped test set (--utts 16 kHz wav files of 40 speakers, lengths 4 s + a gamma
distribution with VoxCeleb1's mean of about 8.2 s, cut at 60 s; synthetic harmonic audio in noise) and
--trials `enroll test target|nontarget` trials (half target), and an ECAPA-L (C=1024, 192-dim, 80-bin fbank,
randomly initialised, seeded) model file. Then times, on --device:

  peer  the seed's evaluation, written plainly in this process: for each utterance read the wav, then fbank,
        CMN and the eager network on the whole utterance and on 5 evenly spaced 3 s crops of the audio (one
        batch of 5), one utterance at a time;
        then a per-trial loop: (cos(whole, whole) + mean of the 5x5 crop cosines) / 2.
  avtk  the same job with the commands a recipe runs, each a new process (Python start-up and model loading
        included): `avtk extract-embeddings --seed-crops 5 scp:wav.scp ...` then `avtk score`;
  avtk  (whole) the recipe's default: whole-utterance embeddings only, and their cosine.

Times are wall clock from the first file read to the scores file, data loading included; the test set sits in
the page cache (written just before). The scores of `avtk --seed-crops` must equal the peer's within 1e-4
(exit status 1 otherwise). The seed's reported figure: 14 s for Vox1-O on one RTX 3090; avtk's goal is under
10 s on one H100.
"""
import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from avtk.embed import crops, save_model  # noqa: E402
from avtk.models import build_network  # noqa: E402
from avtk.train.config import load_config  # noqa: E402

RATE = 16000
TOL = 1e-4


def _write_wav(job):
    """One synthetic utterance: harmonics of the speaker's f0 in noise, from its own seed (picklable for Pool)."""
    path, n_samples, f0, seed = job
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / RATE
    wave = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
    wave = 0.1 * wave + 0.02 * rng.standard_normal(len(t))
    sf.write(path, wave.astype(np.float32), RATE, subtype="PCM_16")


def write_test_set(work, n_utts, n_trials, speakers, seed):
    """wav files (written by one process per CPU), wav.scp and trials under `work`."""
    rng = np.random.default_rng(seed)
    seconds = np.minimum(4.0 + rng.gamma(1.5, (8.2 - 4.0) / 1.5, n_utts), 60.0)
    owner = rng.integers(0, speakers, n_utts)
    f0 = rng.uniform(90, 250, speakers)
    os.makedirs(os.path.join(work, "wav"), exist_ok=True)
    utts = [f"id{owner[i]:05d}-{i:05d}" for i in range(n_utts)]
    paths = [os.path.join(work, "wav", f"{utt}.wav") for utt in utts]
    jobs = [(paths[i], int(seconds[i] * RATE), f0[owner[i]], (seed, i)) for i in range(n_utts)]
    with multiprocessing.Pool(os.cpu_count()) as pool:
        pool.map(_write_wav, jobs, chunksize=16)
    with open(os.path.join(work, "wav.scp"), "w") as scp:
        scp.writelines(f"{utt} {path}\n" for utt, path in zip(utts, paths))
    by_speaker = {}
    for i, s in enumerate(owner):
        by_speaker.setdefault(int(s), []).append(i)
    shared = [u for members in by_speaker.values() if len(members) > 1 for u in members]
    n_target = n_trials // 2
    if len(shared) < 2 or n_trials > n_utts * (n_utts - 1) // 4:
        sys.exit(f"{n_utts} utterances of {speakers} speakers cannot give {n_trials} distinct trials, half target")
    pairs = set()
    while len(pairs) < n_trials:
        target = len(pairs) < n_target
        e = int(rng.choice(shared)) if target else int(rng.integers(n_utts))
        t = int(rng.choice(by_speaker[int(owner[e])])) if target else int(rng.integers(n_utts))
        if e != t and (owner[e] == owner[t]) == target:
            pairs.add((utts[e], utts[t], "target" if target else "nontarget"))
    with open(os.path.join(work, "trials"), "w") as f:
        for e, t, label in sorted(pairs):
            f.write(f"{e} {t} {label}\n")


def make_model(path, seed, channels):
    torch.manual_seed(seed)
    cfg = load_config(None, [f'model.encoder_args={{"channels": {channels}, "embed_dim": 192}}'])
    net = build_network(cfg["model"])
    save_model(path, net.state_dict(), cfg, ["spk"])
    return net.eval()


def peer(net, work, device, n_crops=5, crop_seconds=3.0):
    """The seed's evaluation written plainly; returns (seconds, {(enroll, test): score})."""
    crop_samples = int(crop_seconds * RATE) + 240  # 300 frames of 25/10 ms
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    net = net.to(device)
    emb = {}
    with torch.no_grad():
        for line in open(os.path.join(work, "wav.scp")):
            utt, path = line.split()
            wave, _ = sf.read(path, dtype="float32")
            whole = net(torch.from_numpy(wave)[None].to(device))  # fbank, CMN, encoder
            parts = net(torch.from_numpy(np.stack(crops(wave, n_crops, crop_samples))).to(device))
            emb[utt] = (torch.nn.functional.normalize(whole, dim=1).cpu(),
                        torch.nn.functional.normalize(parts, dim=1).cpu())
    scores = {}
    for line in open(os.path.join(work, "trials")):
        e, t, _ = line.split()
        (we, ce), (wt, ct) = emb[e], emb[t]
        scores[e, t] = float((we @ wt.T).mean() + (ce @ ct.T).mean()) / 2
    return time.perf_counter() - start, scores


def avtk_job(work, device, threads, seed_crops, workers):
    """Seconds of `avtk extract-embeddings` + `avtk score` as separate processes, and the scores."""
    out = os.path.join(work, f"avtk_crops{seed_crops}")
    os.makedirs(out, exist_ok=True)
    commands = [
        ["extract-embeddings", "--model", os.path.join(work, "model.pt"), "--device", device, "--num-threads",
         str(threads), "--num-workers", str(workers), "--seed-crops", str(seed_crops), f"scp:{work}/wav.scp", f"ark,scp:{out}/emb.ark,{out}/emb.scp"],
        ["score", "--trials", os.path.join(work, "trials"), f"scp:{out}/emb.scp", os.path.join(out, "scores")],
    ]
    start = time.perf_counter()
    for args in commands:
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "avtk.cli", *args], capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            sys.exit(f"avtk {' '.join(args)} failed:\n{proc.stderr}")
        print(f"  avtk {args[0]} (--seed-crops {seed_crops}): {time.perf_counter() - began:.2f} s")
    seconds = time.perf_counter() - start
    scores = {}
    for line in open(os.path.join(out, "scores")):
        e, t, s = line.split()[:3]
        scores[e, t] = float(s)
    return seconds, scores


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--utts", type=int, default=4708, help="test utterances (Vox1-O: 4,708)")
    p.add_argument("--trials", type=int, default=37611, help="trials (Vox1-O: 37,611)")
    p.add_argument("--speakers", type=int, default=40, help="test speakers (Vox1-O: 40)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads, both sides")
    p.add_argument("--channels", type=int, default=1024, help="ECAPA-TDNN channels (1024: ECAPA-L)")
    p.add_argument("--num-workers", type=int, default=4,
                   help="extract-embeddings read-ahead workers (the VoxCeleb recipe passes 4 with --device cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="keep the test set here and reuse it (default: a temporary directory)")
    p.add_argument("--quick", action="store_true", help="a CPU check: 40 utterances of 8 speakers, 300 trials")
    args = p.parse_args()
    if args.quick:
        args.utts, args.trials, args.speakers = 40, 300, 8
    torch.set_num_threads(args.threads)
    tmp = None if args.work else tempfile.TemporaryDirectory()
    work = args.work or tmp.name
    os.makedirs(work, exist_ok=True)
    start = time.perf_counter()
    if not os.path.exists(os.path.join(work, "trials")):
        write_test_set(work, args.utts, args.trials, args.speakers, args.seed)
    audio = sum(sf.info(line.split()[1]).duration for line in open(os.path.join(work, "wav.scp")))
    net = make_model(os.path.join(work, "model.pt"), args.seed, args.channels)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"device: {name}; torch {torch.__version__}; {args.utts} utterances ({audio / 3600:.2f} h, mean "
          f"{audio / args.utts:.1f} s), {args.trials} trials, ECAPA-TDNN C={args.channels}; test set ready in {time.perf_counter() - start:.0f} s")

    t_peer, s_peer = peer(net, work, args.device)
    t_crops, s_crops = avtk_job(work, args.device, args.threads, 5, args.num_workers)
    t_whole, s_whole = avtk_job(work, args.device, args.threads, 0, args.num_workers)
    diff = max(abs(s_peer[k] - s_crops[k]) for k in s_peer)
    ok = diff <= TOL and len(s_crops) == len(s_peer) == len(s_whole)
    print()
    print(f"{'job (whole evaluation, data loading included)':52s} {'seconds':>8s} {'vs peer':>8s}")
    print(f"{'peer: the seed procedure, whole + 5 crops, loop':52s} {t_peer:8.2f} {'':>8s}")
    print(f"{'avtk extract-embeddings --seed-crops 5 + score':52s} {t_crops:8.2f} {t_peer / t_crops:7.2f}x")
    print(f"{'avtk extract-embeddings + score (whole only)':52s} {t_whole:8.2f} {t_peer / t_whole:7.2f}x")
    print(f"scores, avtk --seed-crops 5 vs peer: max |difference| {diff:.1e} ({'ok' if ok else 'FAIL'} at {TOL:g})")
    if tmp:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
