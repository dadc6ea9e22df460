"""Atomic outputs: write under a temporary name, rename over the target only when complete."""
import contextlib
import os


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
