#!/usr/bin/env python3
"""How avtk's cost grows with the data, up to VoxCeleb2's size: wall time and peak memory of every step a
VoxCeleb recipe runs on the whole training list, at fractions of 1,092,009 utterances of 5,994 speakers.

    python bench/scale.py [--fractions 64,16,4,1] [--steps prepare,datadir,train,cleanse,score] [--work DIR]

For each fraction 1/F it builds, under --work (default a temporary directory, removed at the end):
  * a seed-layout VoxCeleb2 tree: wav/<spk>/<video>/<utt>.wav for every utterance (hard links to one real 2 s
    wav, so only the directory entries cost disk) and train_all.txt;
  * feats: 256 real 2-3 s fbank matrices in one ark, which every utterance's feats.scp line points into;
  * audio (192-dim) and face (512-dim) embedding arks for every utterance, speaker-structured;
and runs the avtk commands and utils/ helpers as a user would, one process each:
  prepare      avtk prepare-voxceleb seed
  datadir      utils/validate_data_dir.sh, utils/fix_data_dir.sh (on a copy), split_scp into 32 parts,
               utils/subset_data_dir.sh --random (a tenth)
  train        avtk train up to the log line of its first step, feats and wav input, 0 and 8 loader workers
               (a tiny ECAPA: start-up is what is measured); peak memory of the main process and of the largest
               worker, sampled from /proc every 0.1 s
  cleanse      avtk cleanse --audio-emb --face-emb on every utterance
  score        avtk score with AS-Norm, the cohort being every training embedding (as a user who passes the
               training xvectors gets), on Vox1-E-sized (579,818 trials, 145,160 utterances) and Vox1-H-sized
               (550,894 trials, 137,476 utterances) lists; then avtk compute-metrics on the scores
The trial lists do not grow with the fraction; the cohort does.

Prints one table: wall seconds, CPU seconds (user + system of the command and its children, which do not depend
on what else the machine runs) and peak MiB per step and fraction, and the growth of CPU time from each fraction
to the next, as (time ratio) / (size ratio): about 1 is linear, above 1.3 is flagged as super-linear. Peak memory is
the process's high-water mark (VmHWM / ru_maxrss, of the largest process of a shell helper's tree).
Full size needs about 12 GB of disk for the embedding arks and an hour on 2 cores; --fractions 64,16 takes
minutes.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from avtk.io.ark import open_writer  # noqa: E402
from avtk.io.audio import write_wav  # noqa: E402

FULL_UTTS, FULL_SPKS, UTTS_PER_VIDEO = 1_092_009, 5_994, 7
E_TRIALS, E_UTTS, H_TRIALS, H_UTTS = 579_818, 145_160, 550_894, 137_476
LINKS_PER_FILE = 60_000
WORKERS = (0, 8)  # data-loader workers of the training start-up runs
SOURCES = ("feats", "wav")  # training inputs of the start-up runs
SETS = ("E", "H")  # trial lists scored
STEPS = ("prepare", "datadir", "train", "cleanse", "score")
ENV = dict(os.environ, PATH=os.pathsep.join([os.path.join(REPO, "utils"), os.path.dirname(sys.executable),
                                             os.environ.get("PATH", "")]), LC_ALL="C")
TRAIN_CONFIG = """model:
  encoder: ecapa_tdnn
  encoder_args: {in_dim: 80, channels: 64, embed_dim: 32, pooled: 192, attention: 32}
  frontend: kaldi_fbank
loss: {name: aam_softmax, margin: 0.2, scale: 30.0}
optim: {name: adam, lr: 0.001}
scheduler: {name: exponential, gamma: 0.97}
data: {input: feats, crop_seconds: 2.0, batch_size: 32, num_workers: 0}
runtime: {epochs: 1, seed: 0, log_interval: 1}
"""


# ------------------------------------------------------------------------------------------------ measuring

# Runs argv[2:] and writes its peak memory (KiB, ru_maxrss of it and its descendants) to argv[1]. Linux counts
# in a child's ru_maxrss the memory of the process it was forked from, so commands are forked from this small
# process rather than from the benchmark, which holds the lists of a million utterances.
WRAP = ("import os, subprocess, sys\n"
        "p = subprocess.Popen(sys.argv[2:])\n"
        "_, status, usage = os.wait4(p.pid, 0)\n"
        "open(sys.argv[1], 'w').write(f'{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}')\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n")

def _hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid):
    """User + system CPU seconds of a live process (its own threads; /proc/PID/stat fields 14 and 15)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def measure(cmd, cwd, stop_at=None, timeout=7200):
    """Run cmd; (wall seconds, CPU seconds, peak MiB of the main process, peak MiB of its largest child). CPU
    seconds (user + system, the command and its children) do not depend on what else the machine runs, so the
    growth ratios use them. With stop_at (a regex), the run ends (the process group killed) at the first stderr
    line matching it, and both times are up to it."""
    start = time.perf_counter()
    peak_file = None
    if stop_at is None:  # via WRAP: a child forked from this big process would count its memory (ru_maxrss)
        peak_file = tempfile.NamedTemporaryFile(prefix="avtk-peak-", delete=False).name
        cmd = [sys.executable, "-c", WRAP, peak_file] + list(cmd)
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    main_peak, child_peak, tail = 0, 0, []
    if stop_at is not None:
        import threading

        done = threading.Event()

        def sample():
            nonlocal main_peak, child_peak
            while not done.is_set():
                main_peak = max(main_peak, _hwm_kib(proc.pid))
                for child in _children(proc.pid):
                    child_peak = max(child_peak, _hwm_kib(child))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for line in proc.stderr:
            tail = (tail + [line])[-20:]
            if re.search(stop_at, line):
                break
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds(proc.pid) + sum(_cpu_seconds(c) for c in _children(proc.pid))
        main_peak = max(main_peak, _hwm_kib(proc.pid))
        for child in _children(proc.pid):
            child_peak = max(child_peak, _hwm_kib(child))
        done.set()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not re.search(stop_at, "".join(tail[-1:])):
            raise SystemExit(f"{' '.join(map(str, cmd))}: ended before {stop_at!r}:\n{''.join(tail)}")
        return seconds, cpu, main_peak / 1024, child_peak / 1024
    stderr = proc.stderr.read()
    proc.wait()
    seconds = time.perf_counter() - start
    with open(peak_file) as f:
        peak, cpu = f.read().split()
    os.remove(peak_file)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[4:]))} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return seconds, float(cpu), int(peak) / 1024, 0.0


# ------------------------------------------------------------------------------------------------ building

def sizes(fraction):
    n_utts = round(FULL_UTTS / fraction)
    n_spks = max(2, round(FULL_SPKS / fraction))
    return n_utts, n_spks


def utterances(n_utts, n_spks):
    """(speaker index, relative wav path) of every utterance, speakers of about equal size, 7 per video."""
    owner = np.arange(n_utts) * n_spks // n_utts
    out, video, k, prev = [], 0, 0, -1
    for i, s in enumerate(owner):
        if s != prev or k == UTTS_PER_VIDEO:
            video, k = (0 if s != prev else video + 1), 0
            prev = s
        k += 1
        out.append((int(s), f"id{10000 + s}/v{video:09d}/{k:05d}.wav"))
    return out


def build_tree(root, utts, real_wav):
    wav = os.path.join(root, "wav")
    made = set()
    source = real_wav
    with open(os.path.join(root, "train_all.txt"), "w") as f:
        for i, (s, rel) in enumerate(utts):
            d = os.path.dirname(rel)
            if d not in made:
                os.makedirs(os.path.join(wav, d), exist_ok=True)
                made.add(d)
            if i % LINKS_PER_FILE == 0:  # file systems cap a file's hard links (ext4: 65,000)
                source = os.path.join(root, f"real{i // LINKS_PER_FILE}.wav")
                shutil.copyfile(real_wav, source)
            os.link(source, os.path.join(wav, rel))
            f.write(f"id{10000 + s} {rel} 2.00\n")


def embeddings(path, keys, owner, dim, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((owner.max() + 1, dim)).astype(np.float32)
    with open_writer(f"ark,scp:{path}.ark,{path}.scp") as w:
        for start in range(0, len(keys), 65536):
            block = centres[owner[start:start + 65536]] + rng.standard_normal(
                (min(65536, len(keys) - start), dim)).astype(np.float32)
            for k, v in zip(keys[start:start + 65536], block):
                w[k] = v


def write_trials(path, n_trials, n_utts, seed):
    """A Kaldi trials list over n_utts utterances of 1,251 speakers (their keys: eval-<spk>-<n>)."""
    rng = np.random.default_rng(seed)
    spk = np.sort(rng.integers(0, 1251, n_utts))
    keys = np.array([f"eval{s:04d}-{i:06d}" for i, s in enumerate(spk)])
    a = rng.integers(0, n_utts, n_trials)
    b = rng.integers(0, n_utts, n_trials)
    b = np.where(a == b, (b + 1) % n_utts, b)
    pairs = sorted(set(zip(a.tolist(), b.tolist())))
    with open(path, "w") as f:
        for i, j in pairs:
            f.write(f"{keys[i]} {keys[j]} {'target' if spk[i] == spk[j] else 'nontarget'}\n")
    return keys, spk


# ------------------------------------------------------------------------------------------------ steps

def run_fraction(fraction, steps, work, real_wav, feats_ark, results):
    n_utts, n_spks = sizes(fraction)
    base = os.path.join(work, f"f{fraction}")
    os.makedirs(base, exist_ok=True)
    print(f"1/{fraction}: {n_utts} utterances, {n_spks} speakers", flush=True)
    utts = utterances(n_utts, n_spks)
    vox2 = os.path.join(base, "vox2")
    os.makedirs(vox2, exist_ok=True)
    t = time.perf_counter()
    build_tree(vox2, utts, real_wav)
    print(f"  built the tree in {time.perf_counter() - t:.0f} s", flush=True)
    data = os.path.join(base, "data")

    def record(step, cmd, **kwargs):
        seconds, cpu, main_mib, child_mib = measure(cmd, base, **kwargs)
        results.setdefault(step, {})[fraction] = (seconds, cpu, main_mib, child_mib)
        extra = f", largest child {child_mib:.0f} MiB" if child_mib else ""
        print(f"  {step:<22} {seconds:8.1f} s {cpu:8.1f} CPU s {main_mib:8.0f} MiB{extra}", flush=True)

    record("prepare-voxceleb", ["avtk", "prepare-voxceleb", "seed", "--vox2", vox2, data])
    train = os.path.join(data, "vox2_train")
    keys = sorted(rel[:-4].replace("/", "-") for _, rel in utts)
    owner = np.array([int(k[2:7]) - 10000 for k in keys])
    if "datadir" in steps:
        record("validate_data_dir", ["validate_data_dir.sh", "--no-feats", train])
        shutil.copytree(train, train + "_copy")
        record("fix_data_dir", ["fix_data_dir.sh", train + "_copy"])
        parts = [os.path.join(base, "split32", f"wav.{i}.scp") for i in range(1, 33)]
        record("split_scp 32", ["split_scp", os.path.join(train, "wav.scp")] + parts)
        record("subset_data_dir 1/10", ["subset_data_dir.sh", "--random", train, str(n_utts // 10), train + "_sub"])
    if "train" in steps:
        # feats: every utterance points into an ark of 256 real matrices of 200-300 frames
        offsets, frames = feats_ark
        with open(os.path.join(train, "feats.scp"), "w") as f, open(os.path.join(train, "utt2num_frames"), "w") as g:
            for i, k in enumerate(keys):
                f.write(f"{k} {offsets[i % len(offsets)]}\n")
                g.write(f"{k} {frames[i % len(frames)]}\n")
        conf = os.path.join(base, "tiny.yaml")
        with open(conf, "w") as f:
            f.write(TRAIN_CONFIG)
        for source in SOURCES:
            for workers in WORKERS:
                record(f"train start {source} w{workers}",
                       ["avtk", "train", "--config", conf, "--train-data", train, "--exp",
                        os.path.join(base, f"exp_{source}{workers}"), f"data.input={source}",
                        f"data.num_workers={workers}"], stop_at=r"epoch 1 step 1/")
    if "cleanse" in steps or "score" in steps:
        t = time.perf_counter()
        embeddings(os.path.join(base, "audio"), keys, owner, 192, 1)
        if "cleanse" in steps:
            embeddings(os.path.join(base, "face"), keys, owner, 512, 2)
        print(f"  wrote the embedding arks in {time.perf_counter() - t:.0f} s", flush=True)
    if "cleanse" in steps:
        record("cleanse", ["avtk", "cleanse", "--audio-emb", f"scp:{base}/audio.scp", "--face-emb",
                           f"scp:{base}/face.scp", "--out-list", os.path.join(base, "clean.txt"), train])
    if "score" in steps:
        for name, n_trials, n_eval in [x for x in (("E", E_TRIALS, E_UTTS), ("H", H_TRIALS, H_UTTS)) if x[0] in SETS]:
            trials = os.path.join(work, f"trials_{name}")
            if not os.path.exists(trials + ".scp"):  # the same eval set at every fraction
                eval_keys, eval_spk = write_trials(trials, n_trials, n_eval, 3)
                embeddings(trials, list(eval_keys), eval_spk, 192, 4)
            scores = os.path.join(base, f"scores_{name}")
            record(f"score asnorm {name}", ["avtk", "score", "--trials", trials, "--subtract-mean", "--cohort",
                                           f"scp:{base}/audio.scp", f"scp:{trials}.scp", scores])
            record(f"compute-metrics {name}", ["avtk", "compute-metrics", "--trials", trials, scores])
    shutil.rmtree(base)


def make_inputs(work):
    rng = np.random.default_rng(0)
    real_wav = os.path.join(work, "real.wav")
    write_wav(real_wav, (rng.standard_normal(32000) * 0.1).astype(np.float32))
    ark = os.path.join(work, "feats")
    frames = [int(n) for n in rng.integers(200, 301, 256)]
    with open_writer(f"ark,scp:{ark}.ark,{ark}.scp") as w:
        for i, n in enumerate(frames):
            w[f"m{i:03d}"] = rng.standard_normal((n, 80)).astype(np.float32)
    with open(f"{ark}.scp") as f:
        offsets = [line.split()[1] for line in f]
    return real_wav, (offsets, frames)


def table(results, fractions):
    """Wall s, CPU s and peak MiB (main+largest child) per step and fraction; growth of CPU time per growth of
    data between consecutive fractions (CPU time, not wall time: the machine may be shared)."""
    head = f"{'step':<24}" + "".join(f"{f'1/{f}':>27}" for f in fractions) + "   growth: CPU time ratio / size ratio"
    print("\n" + head)
    print(f"{'':<24}" + "".join(f"{'s':>9}{'CPU s':>9}{'MiB':>9}" for _ in fractions))
    for step, by in results.items():
        row = f"{step:<24}"
        for f in fractions:
            if f in by:
                s, cpu, mib, child = by[f]
                row += f"{s:9.1f}{cpu:9.1f}" + (f"{mib:9.0f}" if not child else f"{mib:5.0f}+{child:3.0f}")
            else:
                row += f"{'-':>27}"
        growth = []
        for a, b in zip(fractions, fractions[1:]):
            if a in by and b in by and by[a][1] > 0.5:
                g = (by[b][1] / by[a][1]) / (a / b)
                growth.append(f"{g:.2f}x{' SUPER-LINEAR' if g > 1.3 else ''}")
        print(row + "   " + ", ".join(growth))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", default="64,16,4,1", help="comma-separated F: 1/F of VoxCeleb2's size")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {','.join(STEPS)}")
    ap.add_argument("--work", help="working directory (default: a temporary one, removed at the end)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke size: fractions 8192,2048, one training start-up (feats, no workers), Vox1-E only, "
                         "trial lists cut 100-fold")
    args = ap.parse_args()
    global E_TRIALS, E_UTTS, H_TRIALS, H_UTTS, WORKERS, SOURCES, SETS
    if args.quick:
        args.fractions = "8192,2048"
        E_TRIALS, E_UTTS, H_TRIALS, H_UTTS = (n // 100 for n in (E_TRIALS, E_UTTS, H_TRIALS, H_UTTS))
        WORKERS = (0,)
        SOURCES = ("feats",)
        SETS = ("E",)
    fractions = [int(f) for f in args.fractions.split(",")]
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        ap.error(f"unknown steps {sorted(unknown)}")
    work = args.work or tempfile.mkdtemp(prefix="avtk-scale-")
    os.makedirs(work, exist_ok=True)
    results = {}
    try:
        real_wav, feats = make_inputs(work)
        for f in fractions:
            run_fraction(f, steps, work, real_wav, feats, results)
        table(results, fractions)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
