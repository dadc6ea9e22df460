"""Epoch checkpoints (everything needed to resume exactly), pruning, and weight averaging."""
import glob
import os
import random
import re

import numpy as np
import torch

from avtk.io.atomic import torch_save


def checkpoint_path(exp, epoch):
    return os.path.join(exp, "checkpoints", f"epoch_{epoch:03d}.pt")


def epochs_saved(exp):
    found = []
    for path in glob.glob(os.path.join(exp, "checkpoints", "epoch_*.pt")):
        m = re.search(r"epoch_(\d+)\.pt$", path)
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


def rng_state():
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path, **state):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch_save(state, path)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def clear_previous_run(exp):
    """Remove a previous run's epoch checkpoints, last_good.pt, validation.txt and avg_model.pt from exp;
    returns how many files went. A fresh run must not average, prune or resume against them."""
    stale = [checkpoint_path(exp, e) for e in epochs_saved(exp)]
    stale += [os.path.join(exp, "checkpoints", "last_good.pt"), os.path.join(exp, "validation.txt"),
              os.path.join(exp, "avg_model.pt")]
    gone = 0
    for path in stale:
        if os.path.exists(path):
            os.remove(path)
            gone += 1
    return gone


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
