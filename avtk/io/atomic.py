"""Atomic outputs: write under a temporary name, rename over the target only when complete."""
import contextlib
import os
import shutil


def temp_name(path):
    """The temporary name used while `path` is being written (same directory, so rename is atomic)."""
    head, tail = os.path.split(os.fspath(path))
    return os.path.join(head, f".{tail}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; it replaces `path` on success and is removed on failure."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """Like open(path, mode) for writing, but the file appears under its name only when closed cleanly."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory to fill; it replaces directory `path` on success, is removed on failure.

    One rename per directory, not per file: the way to write many small files (face frames) atomically.
    """
    path = os.fspath(path).rstrip("/")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temp_name(path)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
