#!/usr/bin/env python3
"""Samples/s of avtk's training input pipeline on the CPU, against what an ECAPA-L training step consumes.

    python bench/train_input.py [--workers 0 1 2] [--batches 8] [--repeats 3] [--work DIR]
    python bench/train_input.py --quick       # a smoke run

Builds a small synthetic corpus with the commands users run (`avtk make-synthetic-corpus`, 8 training speakers
x 2 sessions x 8 utterances of 2-14 s, mean about 8 s as VoxCeleb2; `avtk compute-fbank` with utt2num_frames;
`avtk make-augment-sources` with its default counts), then times the DataLoader the Trainer builds
(avtk.train.trainer.Trainer.__init__: CropDataset, ShardedBatches, collate, num_workers, pin_memory off on
the CPU; the augmenter from trainer._augmenter) at batch 128 with 2-second crops, in three modes:

  feats      data.input feats: random 200-frame crops of the ark features (feats.scp);
  wav        data.input wav, no augmentation: random 32,240-sample crops of the wav files;
  wav+aug    as wav, with MUSAN/RIR augmentation (augment.wave: one of clean, reverb, noise, babble, music,
             babble_music per crop, avtk.augment.WaveAugment), from the small stand-in sources;
  musan      as wav+aug, from sources of MUSAN's real lengths in its download layout (noise 1-30 s, music and
             speech 3-5 min, 16 kHz; RIRs 0.3-1 s in the RIRS_NOISES layout), prepared with `avtk
             prepare-augment`: each pick reads its 2 s crop alone (avtk.io.audio.read_span);
  musan-whole  the peer of musan: the previous way, reimplemented here (`whole_file_crops`): each pick takes
             the whole source (cached while 512 MiB allow) as float64, then crops it.

The 128 training utterances are repeated to make longer epochs (index modulo 128; every sample is still
read, cropped and augmented anew), so everything is read from the page cache: a real VoxCeleb2 (1.09 M
utterances, about 2.3 TB of wav or 0.3 TB of fbank) may be slower to read. The augmentation sources are 80
small files that each worker caches in memory; the real MUSAN (about 2,000 files, 109 h) does not fit the
512 MiB cache, so its reads come from disk (the musan rows: crops read alone from the page cache).

Also timed, in the main process (the Trainer's `_features`, which runs on the training device: a GPU does
it in milliseconds, the CPU figure is only a bound): fbank of a wav batch, CMN and SpecAugment per crop.

The consumer side: one fp32 ECAPA-L (C=1024) training step on this CPU is measured (--step-batch crops, forward,
AAM loss, backward, Adam) to show the CPU is no consumer to keep up with. The GPU rates are ESTIMATES, not
measured here: one RTX 3090 ~490 samples/s (REFERENCE: ~37 min per epoch of 1,092,009 utterances at batch
400), one H100 in bf16 ~1,500 samples/s (about 3x; see bench/train_throughput.sh to measure it). The last
table divides them by the one-worker rate: the DataLoader workers (one CPU core each) a GPU needs.

Every (mode, workers) runs --repeats times (a fresh iterator, so fresh workers, each time); samples/s is over
--batches batches after the first (whose wait, worker start-up included, is printed apart); medians are
reported (the machine may be shared). The DataLoader is the Trainer's (persistent_workers with workers). About
6 minutes on 2 cores, corpus generation included.
"""
import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from avtk.train.config import load_config  # noqa: E402
from avtk.train.data import CropDataset, ShardedBatches, collate  # noqa: E402
from avtk.train.trainer import _augmenter  # noqa: E402

GPU_RATES = (("RTX 3090, fp32 (estimate)", 490), ("H100, bf16 (estimate)", 1500))
MODES = ("feats", "wav", "wav+aug", "musan", "musan-whole")
AUG_DIRS = (("noise", "musan_noise"), ("music", "musan_music"), ("speech", "musan_speech"), ("rir", "rirs"))


def avtk_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "avtk.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO)
    if proc.returncode:
        sys.exit(f"avtk {' '.join(map(str, args))} failed:\n{proc.stderr}")


def make_data(work, speakers, utts_per_video):
    """The training data dir (wav.scp, feats.scp, utt2num_frames) and the augmentation data dirs, reused when
    `work` already has them."""
    data = os.path.join(work, "data")
    if not os.path.exists(os.path.join(data, "train", "feats.scp")):
        avtk_cli("make-synthetic-corpus", "--num-train-speakers", speakers, "--num-test-speakers", 2,
                 "--videos-per-speaker", 2, "--utts-per-video", utts_per_video, "--min-duration", 2,
                 "--max-duration", 14, "--no-raw-frames", os.path.join(work, "corpus"), data)
        train = os.path.join(data, "train")
        avtk_cli("compute-fbank", "--write-num-frames", os.path.join(train, "utt2num_frames"),
                 f"scp:{train}/wav.scp", f"ark,scp:{work}/fbank_train.ark,{train}/feats.scp")
    if not os.path.exists(os.path.join(data, "rirs", "wav.scp")):
        avtk_cli("make-augment-sources", os.path.join(work, "augment"), data)
    return data


def write_wav(path, seconds, seed, rir=False):
    """A 16 kHz 16-bit wav of `seconds`: noise (or, rir=True, an exponentially decaying one)."""
    import soundfile as sf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = int(seconds * 16000)
    x = np.random.default_rng(seed).normal(0, 0.1, n)
    if rir:
        x *= np.exp(-np.arange(n) / (0.05 * 16000))
    sf.write(path, x.astype(np.float32), 16000, subtype="PCM_16")


def make_musan(work, counts):
    """Sources of MUSAN's real lengths in the MUSAN and RIRS_NOISES layouts, prepared with `avtk
    prepare-augment` into WORK/musan_data; counts (noise, music, speech, rirs). Reused when present."""
    data = os.path.join(work, "musan_data")
    if os.path.exists(os.path.join(data, "rirs", "wav.scp")):
        return data
    rng = np.random.default_rng(0)
    noise, music, speech, rirs = counts
    root, rir_root = os.path.join(work, "musan"), os.path.join(work, "RIRS_NOISES")
    for i in range(noise):
        write_wav(f"{root}/noise/{('free-sound', 'sound-bible')[i % 2]}/noise-{i:04d}.wav", rng.uniform(1, 30), i)
    for i in range(music):
        write_wav(f"{root}/music/fma/music-fma-{i:04d}.wav", rng.uniform(180, 300), 100 + i)
    for i in range(speech):
        write_wav(f"{root}/speech/{('librivox', 'us-gov')[i % 2]}/speech-{i:04d}.wav", rng.uniform(180, 300), 200 + i)
    for i in range(rirs):
        room = f"{rir_root}/simulated_rirs/{('smallroom', 'mediumroom', 'largeroom')[i % 3]}/Room{i:03d}"
        write_wav(f"{room}/Room{i:03d}-00001.wav", rng.uniform(0.3, 1), 300 + i, rir=True)
    avtk_cli("prepare-augment", "--musan", root, "--rirs", rir_root, data)
    return data


def whole_file_crops(augment):
    """The peer: make `augment` (a WaveAugment) crop its sources the previous way, each pick converting the
    whole source (read once and cached while the budget allows) to float64 before cropping."""
    import types

    from avtk.augment import crop_or_wrap

    def crop(source, index, length, rng):
        _, wave = source.get(index)
        return crop_or_wrap(np.asarray(wave, dtype=np.float64), length, rng)

    for source in augment.sources.values():
        source.crop = types.MethodType(crop, source)
    return augment


class Repeated(torch.utils.data.Dataset):
    """`times` passes over a dataset in one epoch: item (i, epoch) is the dataset's (i mod n, epoch)."""

    def __init__(self, dataset, times):
        self.dataset, self.times = dataset, times

    def __len__(self):
        return len(self.dataset) * self.times

    def __getitem__(self, item):
        index, epoch = item
        return self.dataset[(index % len(self.dataset), epoch)]


def config(data, mode, batch, crop, musan_data=None):
    overrides = [f"data.batch_size={batch}", f"data.crop_seconds={crop}",
                 f"data.input={'feats' if mode == 'feats' else 'wav'}"]
    if mode != "feats" and mode != "wav":
        sources = data if mode == "wav+aug" else musan_data
        overrides += ["augment.wave=true"] + [f"augment.{k}_dir={os.path.join(sources, d)}" for k, d in AUG_DIRS]
    return load_config(None, overrides)


def loader(data, cfg, workers, batches, mode):
    """The Trainer's DataLoader (trainer.py), over a dataset long enough for 1 + `batches` batches."""
    seed = cfg["runtime"]["seed"]
    augment = _augmenter(cfg)
    if mode == "musan-whole":
        whole_file_crops(augment)
    dataset = CropDataset(os.path.join(data, "train"), cfg, seed, augment=augment)
    batch = cfg["data"]["batch_size"]
    dataset = Repeated(dataset, math.ceil((batches + 1) * batch / len(dataset)))
    sampler = ShardedBatches(len(dataset), batch, 0, 1, seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                       pin_memory=False, persistent_workers=workers > 0)


def time_loader(dl, batches):
    """(seconds to the first batch, samples/s over the next `batches`)."""
    start = time.perf_counter()
    it = iter(dl)
    crops, _, _ = next(it)
    first = time.perf_counter() - start
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        crops, _, _ = next(it)
        seen += len(crops)
    rate = seen / (time.perf_counter() - start)
    del it
    return first, rate


def main_process_work(data, batch, crop, repeats):
    """Seconds per batch of the Trainer's _features on the CPU: (wav: fbank + CMN + SpecAugment, feats: CMN +
    SpecAugment)."""
    from avtk.augment import spec_augment
    from avtk.models.speaker_net import SpeakerNet

    net = SpeakerNet(encoder_args={"channels": 64})  # only the front end and CMN are used
    rng = np.random.default_rng(0)
    wave = torch.from_numpy(rng.standard_normal((batch, int(crop * 16000) + 240)).astype(np.float32) * 0.1)
    out = {}
    for mode in ("wav", "feats"):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                feats = net.features(wave)[0] if mode == "wav" else torch.randn(batch, int(crop * 100), 80)
                if mode == "feats":
                    start = time.perf_counter()
                feats = net.normalize(feats)
                feats = torch.stack([spec_augment(f, np.random.default_rng([0, 1, i, 1])) for i, f in enumerate(feats)])
            times.append(time.perf_counter() - start)
        out[mode] = statistics.median(times)
    return out


def cpu_train_step(batch, crop, steps):
    """Samples/s of fp32 ECAPA-L training steps on this CPU (TrainModule: encoder + AAM softmax; Adam)."""
    from avtk.models import build_loss
    from avtk.models.speaker_net import SpeakerNet, TrainModule

    net = SpeakerNet(encoder_args={"channels": 1024, "embed_dim": 192})
    module = TrainModule(net, build_loss("aam_softmax", embed_dim=192, num_classes=5994, margin=0.2, scale=30.0))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    feats, labels = torch.randn(batch, int(crop * 100), 80), torch.randint(0, 5994, (batch,))
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss, _ = module(feats, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:  # the first step allocates
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader num_workers to time")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--musan-counts", type=int, nargs=4, default=[8, 5, 5, 8],
                   metavar=("NOISE", "MUSIC", "SPEECH", "RIRS"),
                   help="files of MUSAN's lengths: noise (1-30 s), music and speech (3-5 min), RIRs (0.3-1 s)")
    p.add_argument("--batch", type=int, default=128, help="data.batch_size")
    p.add_argument("--crop", type=float, default=2.0, help="data.crop_seconds")
    p.add_argument("--batches", type=int, default=8, help="timed batches per run, after the first")
    p.add_argument("--repeats", type=int, default=3, help="runs per (mode, workers); the median is reported")
    p.add_argument("--speakers", type=int, default=8, help="training speakers (x 2 sessions x 8 utterances)")
    p.add_argument("--step-batch", type=int, default=32, help="crops per measured CPU training step (0: skip)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    p.add_argument("--work", help="keep the corpus here and reuse it on the next run (default: a temporary dir)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 speakers, 2 batches of 32, workers 0 and 1")
    args = p.parse_args()
    utts_per_video = 8
    if args.quick:
        args.speakers, utts_per_video, args.batch, args.batches, args.repeats = 4, 4, 32, 2, 1
        args.workers, args.step_batch, args.musan_counts = [0, 1], 4, [2, 1, 2, 3]

    torch.set_num_threads(args.threads)
    tmp = None if args.work else tempfile.TemporaryDirectory()
    work = args.work or tmp.name
    os.makedirs(work, exist_ok=True)
    start = time.perf_counter()
    data = make_data(work, args.speakers, utts_per_video)
    musan_data = make_musan(work, args.musan_counts) if {"musan", "musan-whole"} & set(args.modes) else None
    n_utts = sum(1 for _ in open(os.path.join(data, "train", "wav.scp")))
    durations = [float(line.split()[1]) for line in open(os.path.join(data, "train", "utt2dur"))]
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, main process {args.threads} threads; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"corpus: {n_utts} training utterances, {min(durations):.1f}-{max(durations):.1f} s (mean "
          f"{np.mean(durations):.1f} s), ready in {time.perf_counter() - start:.0f} s; batch {args.batch}, "
          f"{args.crop:g} s crops")

    if musan_data:
        durations = {d: [float(line.split()[1]) for line in open(os.path.join(musan_data, d, "utt2dur"))]
                     for _, d in AUG_DIRS}
        print("MUSAN-length sources: " + ", ".join(f"{d} {len(v)} files {min(v):.1f}-{max(v):.1f} s"
                                                   for d, v in durations.items()))
    results = {}
    for mode in args.modes:
        cfg = config(data, mode, args.batch, args.crop, musan_data)
        for workers in args.workers:
            runs = [time_loader(loader(data, cfg, workers, args.batches, mode), args.batches)
                    for _ in range(args.repeats)]
            results[mode, workers] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
                                      [r[1] for r in runs])
    main_work = main_process_work(data, args.batch, args.crop, max(args.repeats, 2))
    cpu_rate = cpu_train_step(args.step_batch, args.crop, 2) if args.step_batch else None

    print()
    print(f"{'DataLoader (measured)':24s} {'workers':>7s} {'samples/s':>10s} {'first batch':>12s}   runs")
    for (mode, workers), (first, rate, runs) in results.items():
        print(f"{mode:24s} {workers:7d} {rate:10.0f} {first:11.2f}s   {' '.join(f'{r:.0f}' for r in runs)}")
    pairs = [w for w in args.workers if ("musan", w) in results and ("musan-whole", w) in results]
    for w in pairs:
        print(f"MUSAN lengths, {w} workers: crops read alone {results['musan', w][1]:.0f} samples/s vs whole file "
              f"as float64 then crop {results['musan-whole', w][1]:.0f} samples/s: "
              f"{results['musan', w][1] / results['musan-whole', w][1]:.2f}x")
    print(f"main process per batch of {args.batch} on this CPU (measured; on a GPU this runs there): "
          f"wav fbank + CMN + SpecAugment {main_work['wav']:.2f} s ({args.batch / main_work['wav']:.0f} samples/s), "
          f"feats CMN + SpecAugment {main_work['feats']:.2f} s ({args.batch / main_work['feats']:.0f} samples/s)")
    print()
    consumers = list(GPU_RATES)
    if cpu_rate:
        consumers.insert(0, (f"this CPU, fp32, batch {args.step_batch} (measured)", cpu_rate))
    modes = [m for m in args.modes if (m, 1) in results]
    if not modes:
        print("(time --workers 1 to get the workers each consumer needs)")
        return 0
    print(f"{'workers per GPU to keep up':58s} " + " ".join(f"{m:>8s}" for m in modes))
    print(f"{'  one worker delivers (samples/s, measured)':58s} "
          + " ".join(f"{results[m, 1][1]:8.0f}" for m in modes))
    for name, rate in consumers:
        label = f"  {name}: {rate:.0f} samples/s" if rate >= 10 else f"  {name}: {rate:.2f} samples/s"
        print(f"{label:58s} " + " ".join(f"{math.ceil(rate / results[m, 1][1]):8d}" for m in modes))
    scaling = ", ".join(f"{m} {results[m, 2][1] / results[m, 1][1]:.2f}x" for m in modes if (m, 2) in results)
    print("workers = ceil(consumer rate / one worker's rate): one CPU core per worker, linear scaling assumed"
          + (f" (here 2 workers gave {scaling} of 1, on 2 cores shared with the main process)" if scaling else "")
          + f". Medians of {args.repeats} runs; load {os.getloadavg()[0]:.2f} at the end.")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
