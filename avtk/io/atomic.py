"""Atomic outputs: write under a temporary name, rename over the target only when complete.

Every writer here turns an `OSError` about the output (a parent that is a file, a directory where the file
should be, no permission, a full disk) into one `AvtkError`, ``cannot write PATH: REASON``, naming the final
path, never the temporary one. The temporary name is ``.NAME.PID.tmp`` beside NAME (`temp_name`); those left
by a killed job are removed by the next writer of NAME when their PID is no longer alive on this machine
(`remove_stale`), so parallel jobs writing the same directory keep theirs. A target that exists and is not a
regular file or directory (``/dev/null``, ``/dev/full``, a FIFO) is written in place: it cannot be renamed
over, and must never be replaced.

The outputs of one command are written as a group (`atomic_group`): every path is checked and prepared before
the work, and inside the group each writer here (and `avtk.io.ark.TableWriter`) leaves its temporary file in
place when it closes; the group renames them all only when the whole block succeeded, and removes them all
otherwise, so a failure on the last output leaves none of the others looking complete. Side files listing
skipped ids are written by `write_skipped`.

No writer here replaces a file that the running command has read as an input. While `command_inputs` is open
(`avtk.cli` opens it around every command) the shared readers (text tables, arks and the arks an scp points to,
audio, face frames, model files) record each file they open (`note_input`); a writer about to rename over one of
them (by its path, a symlink or a hard link), or about to replace a directory holding one (a wav or frame
included, `under_inputs`), refuses: ``OUTPUT: is also an input of this command (read as
INPUT); give each output its own file`` (`refuse_input`), its temporary file removed and the input untouched.
A command that rewrites its input on purpose (`avtk fix-data-dir`) says so with ``replaces_input=True``.
"""
import contextlib
import errno
import glob
import logging
import os
import re
import shutil
import stat

from avtk.errors import AvtkError

log = logging.getLogger(__name__)

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
    `path` is a directory where a file is to be written (`is_dir` False) or something else where a directory is
    to be written (`is_dir` True), so a long job fails before it starts."""
    path = os.fspath(path)
    if not is_dir and os.path.isdir(path):
        raise AvtkError(f"cannot write {path}: Is a directory")
    if is_dir and os.path.lexists(path) and not os.path.isdir(path):
        raise AvtkError(f"cannot write {path}: {path} is not a directory")
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


class _Inputs:
    """The files the running command has read: {real path: name as read} for tables, scp/ark and model files,
    {(st_dev, st_ino): name as read} for those and the bulk media files (wavs, face frames; at most
    `_BULK_CAP` of them, so that a training run over millions of frames does not grow without bound); `pid`:
    the process of the command (data-loader workers record nothing: they write no outputs)."""

    def __init__(self):
        self.pid = os.getpid()
        self.real = {}
        self.inodes = {}
        self.bulk = 0


_INPUTS = None  # the _Inputs of the running command; None outside `command_inputs`
_BULK_CAP = 200_000  # media files recorded per command (~150-250 bytes each: at most ~50 MB)


@contextlib.contextmanager
def command_inputs():
    """Record, for the block (one command), the files the shared readers open (`note_input`), so that no writer
    of this module replaces one. Outside such a block nothing is recorded (a library user or a long-lived
    process may read a file and later write it on purpose)."""
    global _INPUTS
    saved, _INPUTS = _INPUTS, _Inputs()
    try:
        yield
    finally:
        _INPUTS = saved


def note_input(path, bulk=False):
    """Record regular file `path` as an input of the running command (inside `command_inputs`, in its process;
    else a no-op): its (st_dev, st_ino) and, unless `bulk` (a wav or frame of a corpus: one stat, no
    realpath, at most `_BULK_CAP` per command), its real path. Streams (``-``), pipes, directories, special
    files and missing files are not recorded (the reader reports a missing one)."""
    inputs = _INPUTS
    if inputs is None or path is None or inputs.pid != os.getpid() or (bulk and inputs.bulk >= _BULK_CAP):
        return
    try:
        name = os.fsdecode(path)
        info = os.stat(name)
    except (OSError, TypeError, ValueError):
        return
    key = (info.st_dev, info.st_ino)
    if not stat.S_ISREG(info.st_mode) or key in inputs.inodes:
        return
    inputs.inodes[key] = name
    if not bulk:
        inputs.real.setdefault(os.path.realpath(name), name)
    else:
        inputs.bulk += 1
        if inputs.bulk == _BULK_CAP:
            log.info("read %d media files: those read from now on are not checked against the outputs", _BULK_CAP)


def input_of(path, given=None):
    """The name under which the running command read the file that writing `path` would replace (a recorded
    input, `note_input`, or one of `given`: {real path: name}, an `atomic_group`'s inputs), or None. The same
    file by a symlink, another relative spelling or a hard link is found. A special file (written in place,
    never replaced) is never an input here."""
    path = os.fspath(path)
    real = os.path.realpath(path)
    inputs = _INPUTS
    for table in (given or {}, inputs.real if inputs else {}):
        if real in table:
            return table[real]
    if not inputs or not inputs.inodes:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    name = inputs.inodes.get((info.st_dev, info.st_ino))
    try:  # still that file (its inode not reused by another since it was read)
        same = name is not None and os.path.samefile(name, path)
    except OSError:
        same = False
    return name if same else None


def input_clash(path, read_as):
    """The one wording of an output over an input: ``PATH: is also an input of this command (read as NAME); give
    each output its own file`` (the parenthesis only when the input was named otherwise)."""
    path, read_as = os.fspath(path), os.fspath(read_as)
    shown = "" if read_as == path else f" (read as {read_as})"
    return f"{path}: is also an input of this command{shown}; give each output its own file"


def refuse_input(path, given=None):
    """AvtkError (`input_clash`) if writing `path` would replace an input of the running command (`input_of`),
    or, `path` being a directory (an `atomic_dir` output), would remove one inside it (`under_inputs`)."""
    read_as = input_of(path, given)
    if read_as is None and os.path.isdir(path) and not os.path.islink(path):
        read_as = next(iter(under_inputs(path)), None)
    if read_as is not None:
        raise AvtkError(input_clash(path, read_as))


_GROUPS = []  # the open atomic_group()s of this process, innermost last


class _Group:
    """The renames deferred by an `atomic_group`: path -> (commit, discard), in the order written; the real
    paths of the files they publish, and of the command's inputs, to refuse writing one file twice or over
    an input."""

    def __init__(self, inputs=()):
        self.pending = {}
        self.names = {}  # path -> the files its commit replaces (path and its `also`)
        self.may_replace = set()  # paths written with replaces_input=True
        self.published = {}  # real path -> the path as the command named it
        self.inputs = {os.path.realpath(p): os.fspath(p) for p in inputs if p is not None}

    def defer(self, path, commit, discard, also=(), replaces_input=False):
        for name in (path, *also):
            real = os.path.realpath(name)
            read_as = None if replaces_input else input_of(name, self.inputs)
            clash = (input_clash(name, read_as) if read_as is not None else
                     f"{name}: is written twice by this command (also as {self.published[real]}); give each output "
                     "its own file" if real in self.published else None)
            if clash:
                with contextlib.suppress(OSError):
                    discard()
                raise AvtkError(clash)
        for name in (path, *also):
            self.published[os.path.realpath(name)] = os.fspath(name)
        self.pending[os.fspath(path)] = (commit, discard)
        self.names[os.fspath(path)] = (path, *also)
        if replaces_input:
            self.may_replace.add(os.fspath(path))

    def merge(self, inner):
        """Take over the deferred renames of nested group `inner`."""
        self.pending.update(inner.pending)
        self.names.update(inner.names)
        self.may_replace |= inner.may_replace

    def check_inputs(self):
        """Before the first rename: AvtkError if a pending output would replace an input read since it was
        written (`refuse_input`)."""
        for path, names in self.names.items():
            if path not in self.may_replace:
                for name in names:
                    if not is_special(name):
                        refuse_input(name, self.inputs)


def defer(path, commit, discard, also=(), replaces_input=False):
    """Inside an `atomic_group`: run `commit()` (the renames that publish `path`, and the files `also`) when the
    group succeeds, and `discard()` (remove the temporary files) when it fails; returns True. Outside one:
    returns False. A path the group already publishes, or an input of the command (`input_of`; unless
    `replaces_input`), is an AvtkError (after discard)."""
    if not _GROUPS:
        return False
    _GROUPS[-1].defer(path, commit, discard, also, replaces_input)
    return True


@contextlib.contextmanager
def atomic_group(*paths, dirs=(), inputs=()):
    """Write the outputs of one command as a group: all of them appear, or none does.

    `paths` (files; None entries are ignored) are checked and prepared first (`prepare`: a parent that is a
    file or a directory where a file goes is an AvtkError before any work); so are the directories `dirs`
    (written by `atomic_dir`). Two outputs that are one file, or an output that is one of the files `inputs`,
    are an AvtkError naming it, and nothing is written. Inside the block, the writers of
    this module and `TableWriter` keep their temporary files when they close; on a clean exit the group renames
    them over their final names in the order written, on an error (an AvtkError, a KeyboardInterrupt, any
    exception) it removes them. Special files (``/dev/full``) are written in place as always, so a full disk
    there fails the block before anything is renamed. Groups nest: an inner group defers to the outer one.
    """
    group = _Group(inputs)
    for path in paths:
        if path is not None and not is_special(path):
            refuse_input(path, group.inputs)
            prepare(path)
    for path in dirs:
        if path is not None:
            refuse_input(os.fspath(path).rstrip("/"))
            prepare(os.fspath(path).rstrip("/"), is_dir=True)
    _GROUPS.append(group)
    try:
        yield group
    except BaseException:
        _GROUPS.remove(group)
        for _, discard in group.pending.values():
            with contextlib.suppress(OSError):
                discard()
        raise
    _GROUPS.remove(group)
    if _GROUPS:  # nested: the outer group decides
        _GROUPS[-1].merge(group)
        return
    items, i = list(group.pending.items()), 0
    try:
        group.check_inputs()
        for i, (_, (commit, _)) in enumerate(items):
            commit()
    except BaseException:
        for _, (_, discard) in items[i:]:
            with contextlib.suppress(OSError):
                discard()
        raise


def _remove(tmp):
    """Remove temporary file or directory `tmp` if it is there."""
    with contextlib.suppress(OSError):
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp)
        elif os.path.lexists(tmp):
            os.remove(tmp)


def _rename(tmp, path, replace_dir=False):
    """os.replace(tmp, path) (after removing directory `path` if `replace_dir`), errors as `atomic_path`."""
    try:
        if replace_dir and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as err:
        if is_write_error(err, tmp, path):
            raise write_error(path, err) from None
        raise


@contextlib.contextmanager
def atomic_path(path, replaces_input=False):
    """Yield a temporary path to write; it replaces `path` on success and is removed on failure.

    An OSError about the output (see `is_write_error`) becomes AvtkError ``cannot write PATH: REASON``.
    A special file (``/dev/null``) is yielded itself and written in place. An input of the running command
    (`input_of`) is not replaced: AvtkError (`refuse_input`) before the rename, unless `replaces_input` (a
    command that rewrites its input on purpose).
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
    deferred = False
    try:
        yield tmp
        deferred = defer(path, lambda: _rename(tmp, path), lambda: _remove(tmp), replaces_input=replaces_input)
        if not deferred:
            if not replaces_input:
                refuse_input(path)
            _rename(tmp, path)
    except OSError as err:
        if is_write_error(err, tmp, path):
            raise write_error(path, err) from None
        raise
    finally:
        if not deferred:
            _remove(tmp)


@contextlib.contextmanager
def atomic_open(path, mode="w", replaces_input=False, **kwargs):
    """Like open(path, mode) for writing, but the file appears under its name only when closed cleanly.

    Errors as `atomic_path` (a full disk met while writing or closing names `path`; an input of the command
    is not replaced unless `replaces_input`).
    """
    with atomic_path(path, replaces_input) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def side_path(target, ext):
    """The side file of output file `target`: its name with the extension replaced by `ext` (``emb.1.scp``,
    ``.skipped`` -> ``emb.1.skipped``), as the ``.no_face`` lists of extract-embeddings are named."""
    return os.path.splitext(os.fspath(target))[0] + ext


def write_skipped(path, skipped, total, what, log):
    """List the items a command skipped in side file `path` and say so in one WARNING.

    `skipped`: (id, reason) pairs, written one ``id reason`` line each (the reason without spaces, e.g.
    ``too_short``), atomically (inside the command's `atomic_group`, with its other outputs). The WARNING is
    ``skipped N of TOTAL WHAT (ids in PATH)``. Nothing skipped: no WARNING, and a list of a previous run at
    `path` is removed. `path` None (the output is a stream and no --skipped FILE was given): the WARNING
    names the first id and says the ids are not listed.
    """
    if path is None:
        if skipped:
            log.warning("skipped %d of %d %s, e.g. %s (ids not listed: give --skipped FILE)", len(skipped), total,
                        what, skipped[0][0])
        return
    if not skipped:
        if os.path.isfile(path):
            try:
                os.remove(path)
            except OSError as err:
                raise write_error(path, err) from None
        return
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{key} {reason}\n" for key, reason in skipped)
    log.warning("skipped %d of %d %s (ids in %s)", len(skipped), total, what, path)


def torch_save(obj, path, replaces_input=False):
    """`torch.save(obj, path)` atomically, through a Python file so that a full disk is an OSError (torch's own
    file writer reports it as a RuntimeError) and so the `atomic_path` error naming `path` (an input of the
    command is not replaced unless `replaces_input`)."""
    import torch

    with atomic_open(path, "wb", replaces_input=replaces_input) as f:
        torch.save(obj, f)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory to fill; it replaces directory `path` on success, is removed on failure.

    One rename per directory, not per file: the way to write many small files (face frames) atomically.
    Errors as `atomic_path`; a directory holding an input of the command (`under_inputs`) is not replaced.
    """
    path = os.fspath(path).rstrip("/")
    prepare(path, is_dir=True)
    tmp = temp_name(path)
    deferred = False
    try:
        _remove(tmp)
        os.makedirs(tmp)
        yield tmp
        inside = under_inputs(path)
        if inside:
            raise AvtkError(input_clash(path, inside[0]))
        deferred = defer(path, lambda: _rename(tmp, path, replace_dir=True), lambda: _remove(tmp))
        if not deferred:
            _rename(tmp, path, replace_dir=True)
    except OSError as err:
        if is_write_error(err, tmp, path):
            raise write_error(path, err) from None
        raise
    finally:
        if not deferred:
            _remove(tmp)


def under_inputs(directory):
    """The recorded inputs of the running command (`note_input`, tables and bulk media files alike) that are
    files of the tree `directory` (by inode: a hard link counts; a symlink in the tree does not, replacing the
    tree removes only the link), by the names they were read under: replacing the directory would remove
    them. The tree is walked (one lstat a file), so a directory that does not exist yet costs nothing; the first
    input found is returned alone."""
    inputs = _INPUTS
    if not inputs or not inputs.inodes:
        return []
    for top, _, files in os.walk(directory):
        for file in files:
            path = os.path.join(top, file)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            name = inputs.inodes.get((info.st_dev, info.st_ino)) if stat.S_ISREG(info.st_mode) else None
            with contextlib.suppress(OSError):
                if name is not None and os.path.samefile(name, path):  # its inode not reused since it was read
                    return [name]
    return []
