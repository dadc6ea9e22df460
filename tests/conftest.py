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
