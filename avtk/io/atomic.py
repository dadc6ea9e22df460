"""Atomic outputs: write under a temporary name, rename over the target only when complete.

Every writer here turns an `OSError` about the output (a parent that is a file, a directory where the file
should be, no permission, a full disk) into one `AvtkError`, ``cannot write PATH: REASON``, naming the final
path, never the temporary one. The temporary name is ``.NAME.PID.tmp`` beside NAME (`temp_name`); those left
by a killed job are removed by the next writer of NAME when their PID is no longer alive on this machine
(`remove_stale`), so parallel jobs writing the same directory keep theirs. A target that exists and is not a
regular file or directory (``/dev/null``, ``/dev/full``, a FIFO) is written in place: it cannot be renamed
over, and must never be replaced.
"""
import contextlib
import errno
import glob
import os
import re
import shutil

from avtk.errors import AvtkError

# errno values that are about the file system being written, whichever file the error names
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def temp_name(path):
    """The temporary name used while `path` is being written (same directory, so rename is atomic)."""
    head, tail = os.path.split(os.fspath(path))
    return os.path.join(head, f".{tail}.{os.getpid()}.tmp")


def is_special(path):
    """Whether `path` exists and is neither a regular file nor a directory (a device, a FIFO, a socket)."""
    return os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path)


def write_error(path, err):
    """The AvtkError for OSError `err` met while writing `path`: ``cannot write PATH: REASON``."""
    return AvtkError(f"cannot write {os.fspath(path)}: {err.strerror or err}")


def is_write_error(err, *paths):
    """Whether OSError `err` is about writing one of `paths` (it names one or a file under one, or the file
    system is full or read-only)."""
    if err.errno in _WRITE_ERRNOS:
        return True
    names = [os.fspath(p) for p in paths]
    for name in (err.filename, err.filename2):
        if isinstance(name, (str, bytes, os.PathLike)):
            name = os.fsdecode(name)
            if any(name == n or name.startswith(n + os.sep) for n in names):
                return True
    return False


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def remove_stale(path):
    """Remove the temporary files (or directories) of `path` left by processes no longer alive; returns them.

    Only names ``.NAME.PID.tmp`` with a PID other than ours that is not running on this machine are touched.
    """
    head, tail = os.path.split(os.fspath(path))
    pattern = re.compile(re.escape(f".{tail}.") + r"(\d+)\.tmp")
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(head), glob.escape(f".{tail}.") + "*.tmp")):
        match = pattern.fullmatch(os.path.basename(tmp))
        if not match or int(match[1]) == os.getpid() or _pid_alive(int(match[1])):
            continue
        try:
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp)
            else:
                os.remove(tmp)
            removed.append(tmp)
        except FileNotFoundError:  # another writer removed it first
            pass
        except OSError as err:
            raise write_error(path, err) from None
    return removed


def prepare(path, is_dir=False):
    """Make the parent directory of `path` and clear its stale temporary files; AvtkError if that fails, or if
    `path` is a directory where a file is to be written (`is_dir` False), so a long job fails before it starts."""
    path = os.fspath(path)
    if not is_dir and os.path.isdir(path):
        raise AvtkError(f"cannot write {path}: Is a directory")
    make_dirs(os.path.dirname(path) or ".", what=path)
    remove_stale(path)


def make_dirs(path, what=None):
    """`os.makedirs(path, exist_ok=True)`, or AvtkError ``cannot write WHAT: X is not a directory`` (a file
    stands where a directory is needed) or ``cannot write WHAT: REASON``; `what` defaults to `path`."""
    path, what = os.fspath(path), os.fspath(what if what is not None else path)
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # path, or one of its parents, is not a directory
        blocker = parent = path
        while parent and parent != os.path.dirname(parent):
            if os.path.lexists(parent) and not os.path.isdir(parent):
                blocker = parent
                break
            parent = os.path.dirname(parent)
        raise AvtkError(f"cannot write {what}: {blocker} is not a directory") from None
    except OSError as err:
        raise write_error(what, err) from None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; it replaces `path` on success and is removed on failure.

    An OSError about the output (see `is_write_error`) becomes AvtkError ``cannot write PATH: REASON``.
    A special file (``/dev/null``) is yielded itself and written in place.
    """
    path = os.fspath(path)
    if is_special(path):
        try:
            yield path
        except OSError as err:
            if is_write_error(err, path):
                raise write_error(path, err) from None
            raise
        return
    prepare(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if is_write_error(err, tmp, path):
            raise write_error(path, err) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp)
            elif os.path.lexists(tmp):
                os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """Like open(path, mode) for writing, but the file appears under its name only when closed cleanly.

    Errors as `atomic_path` (a full disk met while writing or closing names `path`).
    """
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def torch_save(obj, path):
    """`torch.save(obj, path)` atomically, through a Python file so that a full disk is an OSError (torch's own
    file writer reports it as a RuntimeError) and so the `atomic_path` error naming `path`."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory to fill; it replaces directory `path` on success, is removed on failure.

    One rename per directory, not per file: the way to write many small files (face frames) atomically.
    Errors as `atomic_path`.
    """
    path = os.fspath(path).rstrip("/")
    prepare(path, is_dir=True)
    tmp = temp_name(path)
    try:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        yield tmp
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as err:
        if is_write_error(err, tmp, path):
            raise write_error(path, err) from None
        raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
