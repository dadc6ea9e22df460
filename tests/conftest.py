"""Shared test helpers: run commands the way users do, from the repository's utils/ and avtk."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UTILS = REPO / "utils"


def _env(extra_path=None):
    env = dict(os.environ)
    paths = [str(UTILS), str(Path(sys.executable).parent)]
    if extra_path:
        paths.insert(0, str(extra_path))
    env["PATH"] = os.pathsep.join(paths + [env.get("PATH", "")])
    env["LC_ALL"] = "C"
    return env


def run(cmd, *, cwd=None, check=True, extra_path=None, input=None):
    """Run a command line (list of strings) and return the CompletedProcess with text output."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_env(extra_path), input=input,
        capture_output=True, text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def avtk(*args, **kwargs):
    """Run `avtk <args>` as a subprocess (the installed console script's code path)."""
    return run([sys.executable, "-m", "avtk.cli", *args], **kwargs)


@pytest.fixture
def sh():
    return run


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small tensors: OpenMP sync costs dominate them (more so under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize_bn(model, seed=0, negative_scales=False):
    """Give every BatchNorm non-trivial running statistics and affine terms (some scales negative if asked), so
    that padding leaks and wrong BN folds show; returns the model in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            sign = (torch.randint(0, 2, (n,), generator=g) * 2 - 1) if negative_scales else 1
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_((torch.rand(n, generator=g) + 0.5) * sign)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)
    return model.eval()


# Config overrides of small networks for tests that need model files: an ECAPA-TDNN and an iresnet18.
SMALL_SPEAKER = ["model.encoder_args={in_dim: 80, channels: 32, embed_dim: 16}"]
SMALL_FACE = ["model.encoder=iresnet18", "model.encoder_args={width: 4, embed_dim: 16}"]


def write_model(path, overrides, seed=0):
    """An avtk model file (avtk.embed.save_model) of a randomly initialised network of the config `overrides`,
    with perturbed BatchNorm statistics so that eval mode matters; returns path."""
    import torch

    from avtk.embed import save_model
    from avtk.models import build_network
    from avtk.train.config import load_config

    cfg = load_config(None, overrides)
    torch.manual_seed(seed)
    net = build_network(cfg["model"])
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    save_model(path, net.state_dict(), cfg, ["s1", "s2"])
    return path


def write_conf(path, base, **changes):
    """Write the training config `base` (a dict) to path with `section__key=value` changes; returns path."""
    import yaml

    conf = yaml.safe_load(yaml.safe_dump(base))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        conf.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(conf))
    return path
