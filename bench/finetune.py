#!/usr/bin/env python3
"""Fine-tuning a pretrained network on a corpus of few speakers, against training on it from scratch.

    python bench/finetune.py [--work DIR]      # 21 CPU minutes (36 min wall on 2 cores shared, load ~6)
    python bench/finetune.py --quick           # a check of the script: tiny corpora, 2 epochs

Two synthetic corpora (avtk make-synthetic-corpus), with other seeds, so other voices, sessions and channels:
  pretraining  --pre-speakers (200) speakers x 2 videos x 2 utterances of 2-4 s (seed 101);
  small        15 training speakers x 3 videos x 4 utterances of 2-8 s, and 10 unseen test speakers with the
               generator's trials (seed 202): the shape of the issue's corpus of real voices (15 / 10 speakers).
A small ECAPA-TDNN (C=128) is pretrained on the first, then trained on the small corpus's training speakers:
  scratch      from a random initialisation (the mini recipe's schedule: lr warm-up, margin warm-up);
  ft random    avtk train --init-model, the classifier random (finetune.classifier_init: random);
  ft mean      the classifier from the new speakers' mean embeddings (classifier_init: mean);
  ft mean, frozen 1, enc lr x0.3: the same, the encoder frozen for the first epoch and at 0.3 x the lr after.
Every run validates on the small corpus's test trials after each epoch (EXP/validation.txt), and its
avg_model.pt is scored as a recipe does (extract-embeddings, score: cosine, compute-metrics). The pretrained
network itself is scored too (no training on the small corpus). Prints the table and each EER as a ratio of
the from-scratch one.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PATH=os.pathsep.join([os.path.join(REPO, "utils"), os.path.dirname(sys.executable),
                                             os.environ.get("PATH", "")]), LC_ALL="C")


def config(channels, batch, epochs, finetune):
    """A training config (dict): a small ECAPA-TDNN on feats; from scratch the mini recipe's schedule
    (conf/ecapa_mini.yaml: lr and margin warm-ups), fine-tuning half its lr without the lr warm-up. Its margin
    grows over the first epoch for every classifier init alike."""
    cfg = {"model": {"encoder": "ecapa_tdnn", "encoder_args": {"in_dim": 80, "channels": channels, "embed_dim": 128,
                                                                 "pooled": 3 * channels, "attention": 64}},
           "loss": {"margin": 0.2, "scale": 30.0, "margin_warmup_start": 1, "margin_warmup_epochs": 2},
           "optim": {"name": "adam", "lr": 0.002, "weight_decay": 2.0e-5},
           "scheduler": {"name": "warmup_exponential", "warmup_epochs": 1, "final_lr": 1.0e-4},
           "data": {"input": "feats", "crop_seconds": 2.0, "batch_size": batch},
           "runtime": {"epochs": epochs, "seed": 0, "log_interval": 1000, "keep_last": 3, "average_last": 3}}
    if finetune:
        cfg["loss"].update(margin_warmup_start=0, margin_warmup_epochs=1)
        cfg["optim"]["lr"], cfg["scheduler"]["warmup_epochs"] = 0.001, 0
    return cfg


VARIANTS = (  # name, extra overrides
    ("ft random", ["finetune.classifier_init=random"]),
    ("ft mean", ["finetune.classifier_init=mean"]),
    ("ft mean, frozen 1, enc lr x0.3", ["finetune.classifier_init=mean", "finetune.freeze_encoder_epochs=1",
                                        "optim.encoder_lr_scale=0.3"]),
)


def avtk(*args, log=None):
    """Run `avtk ARGS` as a user does; its stderr (the log) is returned, and kept in `log` if given."""
    proc = subprocess.run([sys.executable, "-m", "avtk.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, cwd=REPO)
    if log:
        with open(log, "w") as f:
            f.write(proc.stderr)
    if proc.returncode:
        sys.exit(f"avtk {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc.stderr


def corpus(work, name, seed, train, test, videos, utts, low, high):
    """A synthetic corpus with fbank: WORK/NAME/data/{train,test}."""
    root = os.path.join(work, name)
    avtk("make-synthetic-corpus", "--seed", seed, "--num-train-speakers", train, "--num-test-speakers", test,
         "--num-dev-speakers", 0, "--videos-per-speaker", videos, "--utts-per-video", utts, "--min-duration", low,
         "--max-duration", high, "--label-noise", 0, "--no-raw-frames", "--nj", 2, f"{root}/corpus", f"{root}/data")
    for x in ("train", "test"):
        d = f"{root}/data/{x}"
        avtk("compute-fbank", "--write-num-frames", f"{d}/utt2num_frames", f"scp:{d}/wav.scp",
             f"ark,scp:{root}/fbank_{x}.ark,{d}/feats.scp")
    return f"{root}/data"


def evaluate(work, name, model, test):
    """(EER %, minDCF p=0.01) of a model's cosine scores on the test trials, as a recipe gets them."""
    out = os.path.join(work, "eval", name.replace(" ", "_").replace(",", ""))
    os.makedirs(out, exist_ok=True)
    avtk("extract-embeddings", "--model", model, f"scp:{test}/feats.scp", f"ark,scp:{out}/emb.ark,{out}/emb.scp")
    avtk("score", "--trials", f"{test}/trials", f"scp:{out}/emb.scp", f"{out}/scores.txt")
    metrics = avtk_stdout("compute-metrics", f"{out}/scores.txt")
    return (float(re.search(r"^EER\s+([\d.]+)", metrics, re.M).group(1)),
            float(re.search(r"^minDCF\(p=0\.01\)\s+([\d.]+)", metrics, re.M).group(1)))


def avtk_stdout(*args):
    proc = subprocess.run([sys.executable, "-m", "avtk.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, cwd=REPO, check=True)
    return proc.stdout


def train(work, name, conf, data, test, *extra):
    """(seconds, [(epoch, train loss, train acc %, validation EER %)]) of one avtk train run."""
    exp = os.path.join(work, "exp", name.replace(" ", "_").replace(",", ""))
    start = time.time()
    log = avtk("train", "--config", conf, "--train-data", f"{data}/train", "--exp", exp, "--val-trials",
               f"{test}/trials", *extra, log=exp + ".log")
    seconds = time.time() - start
    loss = {int(e): (float(lo), float(a)) for e, _, lo, a in
            re.findall(r"epoch (\d+) step (\d+)/\2 lr \S+ loss (\S+) acc (\S+)%", log)}
    eer = {int(e): float(v) for e, v in re.findall(r"epoch (\d+) validation EER ([\d.]+)%", log)}
    return exp, seconds, [(e, *loss[e], eer.get(e)) for e in sorted(loss)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", help="working directory (default: a temporary one, removed at the end)")
    p.add_argument("--quick", action="store_true", help="tiny corpora and networks, 2 epochs: checks the script")
    p.add_argument("--pre-speakers", type=int, default=200, help="speakers of the pretraining corpus")
    p.add_argument("--pre-epochs", type=int, default=12)
    p.add_argument("--epochs", type=int, default=10, help="epochs on the small corpus (every variant)")
    args = p.parse_args()
    if args.quick:
        args.pre_speakers, args.pre_epochs, args.epochs = 8, 2, 2
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="avtk_finetune_")
    work = args.work or tmp.name
    os.makedirs(work, exist_ok=True)
    t0 = time.time()
    small_shape = (4, 3, 2, 2, 1.5, 3) if args.quick else (15, 10, 3, 4, 2.0, 8.0)
    pre = corpus(work, "pre", 101, args.pre_speakers, 2, 2, 2, 2.0, 4.0 if not args.quick else 2.5)
    small = corpus(work, "small", 202, *small_shape)
    test = f"{small}/test"
    print(f"corpora and fbank: {time.time() - t0:.0f} s ({args.pre_speakers} pretraining speakers; "
          f"{small_shape[0]} training and {small_shape[1]} unseen test speakers in the small corpus)", flush=True)

    size = dict(channels=32, batch=8) if args.quick else dict(channels=128, batch=64)
    confs = {}
    for name in ("scratch", "finetune"):
        confs[name] = os.path.join(work, f"{name}.yaml")
        with open(confs[name], "w") as f:
            yaml.safe_dump(config(**size, epochs=args.epochs, finetune=name == "finetune"), f, sort_keys=False)
    pre_conf = confs["scratch"]

    pre_exp, pre_s, _ = train(work, "pretrain", pre_conf, pre, test, f"runtime.epochs={args.pre_epochs}")
    rows = [("pretrained only (no training on the small corpus)", 0, None, *evaluate(work, "pretrained",
                                                                                   f"{pre_exp}/avg_model.pt", test))]
    print(f"pretraining: {pre_s:.0f} s", flush=True)
    runs = [("scratch", confs["scratch"], [])] + [(n, confs["finetune"], ["--init-model", f"{pre_exp}/avg_model.pt",
                                                                          *o]) for n, o in VARIANTS]
    for name, conf, extra in runs:
        exp, seconds, curve = train(work, name, conf, small, test, *extra)
        rows.append((name, seconds, curve, *evaluate(work, name, f"{exp}/avg_model.pt", test)))
        print(f"{name}: {seconds:.0f} s", flush=True)

    scratch_eer = rows[1][3]
    print(f"\nFine-tuning on {small_shape[0]} speakers, tested on {small_shape[1]} unseen speakers "
          f"({sum(1 for _ in open(f'{test}/trials'))} trials); pretrained on {args.pre_speakers} other speakers; "
          f"ECAPA-TDNN C={size['channels']}, {args.epochs} epochs each")
    print("| system | train s | epoch 1: loss / acc % / val EER % | last epoch: loss / acc % / val EER % | "
          "avg_model EER % | minDCF p=0.01 | EER vs scratch |")
    print("|---|---|---|---|---|---|---|")
    for name, seconds, curve, eer, dcf in rows:
        first = last = "-"
        if curve:
            first, last = ("{1:.2f} / {2:.1f} / {3:.2f}".format(*c) for c in (curve[0], curve[-1]))
        print(f"| {name} | {seconds:.0f} | {first} | {last} | {eer:.2f} | {dcf:.3f} | "
              f"{eer / max(scratch_eer, 1e-9):.2f}x |")
    print("\nvalidation EER % per epoch:")
    for name, _, curve, _, _ in rows[1:]:
        print(f"  {name:32s} " + " ".join(f"{c[3]:5.2f}" for c in curve))
    print(f"total {time.time() - t0:.0f} s")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
