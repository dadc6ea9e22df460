"""Epoch checkpoints (everything needed to resume exactly), pruning, weight averaging, validation.txt."""
import glob
import logging
import os
import random
import re

import numpy as np
import torch

from avtk.embed import nonfinite
from avtk.errors import AvtkError
from avtk.io.atomic import atomic_open, make_dirs, torch_save

log = logging.getLogger(__name__)
REQUIRED = ("epoch", "model", "loss", "optimizer", "rng", "config", "speakers")


def checkpoint_path(exp, epoch):
    return os.path.join(exp, "checkpoints", f"epoch_{epoch:03d}.pt")


def epochs_saved(exp):
    found = []
    for path in glob.glob(os.path.join(exp, "checkpoints", "epoch_*.pt")):
        m = re.search(r"epoch_(\d+)\.pt$", path)
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


def rng_state(device=None):
    """The RNG states of this process: torch (CPU), numpy, python, and with a CUDA `device` that device's
    alone (each rank saves its own; a restore on fewer visible GPUs must not need the others')."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device=None):
    """Restore rng_state(device)'s output; the CUDA state goes to `device` only. Older checkpoints hold a list of
    every visible device's state: this device's entry is used when it exists."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):
        index = device.index or 0
        if index >= len(cuda):
            log.warning("the checkpoint holds no CUDA RNG state for %s; its generator keeps its seed", device)
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def save(path, **state):
    make_dirs(os.path.dirname(path) or ".", what=path)  # a file in the way is an AvtkError naming it
    torch_save(state, path)


def load(path):
    """A checkpoint written by save(); one that cannot be read (truncated, not a checkpoint), lacks an entry
    of REQUIRED or whose weights hold a NaN or an infinity (avtk.embed.nonfinite) is an AvtkError naming the
    file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises assorted errors (RuntimeError, EOFError, UnpicklingError, ...)
        raise AvtkError(f"{path}: cannot read the checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'truncated?'})") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise AvtkError(f"{path}: not an avtk training checkpoint (no {', '.join(missing)})")
    bad = nonfinite(list(state["model"].items()) + list((state.get("loss") or {}).items())) \
        if isinstance(state["model"], dict) else ""
    if bad:
        raise AvtkError(f"{path}: cannot read the checkpoint (its weights hold NaN or infinite values: {bad})")
    return state


def load_last(exp, before=None):
    """(path, state) of the last readable epoch checkpoint in exp (below epoch `before` if given); an unreadable
    one gets a WARNING naming it and the previous epoch's is tried. (None, None) when exp has no checkpoint;
    an AvtkError naming every file when none can be read."""
    epochs = [e for e in epochs_saved(exp) if before is None or e < before]
    bad = []
    for epoch in reversed(epochs):
        path = checkpoint_path(exp, epoch)
        try:
            return path, load(path)
        except AvtkError as err:
            log.warning("%s; trying the previous epoch's checkpoint", err)
            bad.append(path)
    if bad:
        raise AvtkError(f"no readable checkpoint in {exp}/checkpoints: {', '.join(bad)} cannot be read")
    return None, None


def run_files(exp):
    """The files of a run in exp that a fresh run replaces: epoch checkpoints, last_good.pt, validation.txt,
    avg_model.pt (and an audio-visual run's speaker_model.pt and face_model.pt), config_history.yaml and
    train_skipped.txt."""
    return [checkpoint_path(exp, e) for e in epochs_saved(exp)] + [
        os.path.join(exp, name) for name in ("checkpoints/last_good.pt", "validation.txt", "avg_model.pt",
                                             "speaker_model.pt", "face_model.pt", "config_history.yaml",
                                             "train_skipped.txt")]


def check_not_run_file(exp, key, path):
    """AvtkError when the model file `path` (of config key `key`) is one of exp's `run_files`: a fresh run
    there would remove or replace it."""
    for own in run_files(exp):
        if os.path.exists(own) and os.path.samefile(own, path):
            raise AvtkError(f"{key} {path}: is a file of the run in --exp {exp}, which a fresh run replaces; copy it "
                            "out of the experiment directory first, or train into another --exp")


def clear_previous_run(exp):
    """Remove a previous run's `run_files` from exp; returns how many files went. A fresh run must not average,
    prune or resume against them."""
    gone = 0
    for path in run_files(exp):
        if os.path.lexists(path):
            try:
                os.remove(path)
            except OSError as err:
                raise AvtkError(f"{path}: cannot remove this file of a previous run ({err.strerror}); remove it or "
                                "choose another --exp") from None
            gone += 1
    return gone


def read_validation(exp):
    """{epoch: line} of EXP/validation.txt (`epoch eer` lines); lines that do not parse are left out."""
    lines = {}
    path = os.path.join(exp, "validation.txt")
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) == 2 and fields[0].isdigit():
                    lines[int(fields[0])] = line.strip()
    return lines


def write_validation(exp, lines):
    """Write {epoch: line} as EXP/validation.txt, in epoch order, atomically."""
    with atomic_open(os.path.join(exp, "validation.txt"), "w", encoding="utf-8") as f:
        for epoch in sorted(lines):
            f.write(lines[epoch] + "\n")


def prune(exp, keep):
    for epoch in epochs_saved(exp)[:-keep] if keep > 0 else []:
        os.remove(checkpoint_path(exp, epoch))


def average(paths):
    """The element-wise mean of the 'model' weights in checkpoints; integer buffers come from the last."""
    states = [load(p)["model"] for p in paths]
    avg = {}
    for key, value in states[-1].items():
        if value.is_floating_point():
            avg[key] = sum(s[key].double() for s in states).div(len(states)).to(value.dtype)
        else:
            avg[key] = value.clone()
    return avg
