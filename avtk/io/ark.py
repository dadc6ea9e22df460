"""Kaldi tables of matrices and vectors: rspecifiers and wspecifiers read and written through kaldiio.

Writing (`open_writer`)::

    with open_writer("ark,scp:exp/xvectors/xvector.ark,exp/xvectors/xvector.scp") as writer:
        writer["utt1"] = np.zeros((3, 40), np.float32)

Supported wspecifiers: ``ark:FILE``, ``ark,scp:FILE.ark,FILE.scp``, ``ark,t:FILE`` (text), ``ark:-``
(standard output) and ``ark:| COMMAND`` (a pipe), with the Kaldi options ``t`` (text), ``b`` (binary),
``f``/``nf`` (flush after every item or not) and ``p`` (accepted, no effect). ``scp:FILE`` alone is not a
valid wspecifier in Kaldi and is refused.

File outputs are atomic: the ark and the scp are written under temporary names
(`avtk.io.atomic.temp_name`) and renamed over their final names only when the writer closes without an
error, the ark first and then the scp (an existing scp of the same name is removed before the ark is
renamed, so an old scp never points into a new ark). On an error both temporary files are removed. The scp
lines point at the final ark path with the byte offset of each value, as Kaldi writes them. Standard output
and pipes are not atomic by nature, nor is a special file such as ``/dev/null`` (written in place). A file
that cannot be written (its directory is a file, its name a directory, a full disk) is an `AvtkError`
``cannot write FILE: REASON`` naming the ark or the scp; stale temporary files of killed jobs are removed
as `avtk.io.atomic` does.

Values are written in Kaldi's binary format (``FM``/``FV`` little-endian float32, the format Kaldi's
``copy-feats`` writes) or its text format. Floating-point arrays of 1 or 2 dimensions are stored as float32;
a 1-D ``np.int32`` array is stored as a Kaldi int32 vector. An empty matrix is stored as 0 x 0, as Kaldi
requires. Text values are written with the shortest
decimal that reads back to the same float32, always with a decimal point (so kaldiio reads them as floats).

Reading (`open_reader`, `load_table`): ``ark:FILE``, ``scp:FILE``, ``ark:-``, ``ark:COMMAND |``, and the
Kaldi rspecifier options ``o``, ``s``, ``cs``, ``no``, ``ns``, ``ncs``, ``b``, ``t`` (accepted, no effect)
and ``p`` (permissive: stop at the first unreadable value with a warning instead of failing). Every failure
(missing file, truncated or corrupt ark, failing pipe) is an `AvtkError` naming the rspecifier, the file
and, when known, the key. A value holding a NaN or an infinity is an error too, naming the key and the row
(`check_finite_value`; even with ``p``, as it is no read failure): features and embeddings must be finite.
Every key read from an ark, text or binary, is held to the rule of text tables (`avtk.data.table`): a
byte-order mark before the first key is dropped, an invisible character, Unicode space or control
character in a key is an error naming the ark and the entry (`_checked_ark_key`).

Embedding tables of a million entries are read in bulk by `load_vectors`: one float32 matrix gathered from
each ark at once, with the per-entry reader as its fallback (and the source of every error message).
"""
from __future__ import annotations

import logging
import mmap
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping

import kaldiio
import numpy as np

from avtk.data.table import decode_lines, line_problem
from avtk.errors import AvtkError
from avtk.io import atomic
from avtk.io.atomic import temp_name

log = logging.getLogger(__name__)

_WRITE_OPTIONS = {"t", "b", "f", "nf", "p"}
_READ_OPTIONS = {"o", "no", "s", "ns", "cs", "ncs", "p", "np", "b", "t"}
_STDERR_TAIL = 800  # characters of a failing pipe's stderr quoted in an error


# --------------------------------------------------------------------------------------------------
# specifiers


def parse_specifier(spec, kind):
    """Split `types:files` into (ark, scp, options); kind is 'wspecifier' or 'rspecifier'."""
    if not isinstance(spec, str) or ":" not in spec:
        raise AvtkError(f"invalid {kind} {spec!r}: expected e.g. 'ark:FILE', 'scp:FILE' or 'ark,scp:FILE.ark,FILE.scp'")
    types_text, files_text = spec.split(":", 1)
    types = [t.strip() for t in types_text.split(",")]
    allowed = _WRITE_OPTIONS if kind == "wspecifier" else _READ_OPTIONS
    tables = [t for t in types if t in ("ark", "scp")]
    options = set()
    for t in types:
        if t in ("ark", "scp"):
            continue
        if t not in allowed:
            raise AvtkError(f"invalid {kind} {spec!r}: unknown option {t!r}")
        options.add(t)
    if len(tables) != len(set(tables)) or not tables:
        raise AvtkError(f"invalid {kind} {spec!r}: name 'ark' and/or 'scp' once each")
    if tables == ["ark", "scp"] or tables == ["scp", "ark"]:
        if kind == "rspecifier":
            raise AvtkError(f"invalid rspecifier {spec!r}: read either an ark or an scp, not both")
        if "," not in files_text:
            raise AvtkError(f"invalid wspecifier {spec!r}: 'ark,scp:' needs two files, 'ark,scp:FILE.ark,FILE.scp'")
        first, second = (f.strip() for f in files_text.split(",", 1))
        files = dict(zip(tables, (first, second)))
    else:
        files = {tables[0]: files_text.strip()}
    for name in files.values():
        if not name:
            raise AvtkError(f"invalid {kind} {spec!r}: empty file name")
    return files.get("ark"), files.get("scp"), options


def _is_output_pipe(name):
    return name.startswith("|")


def _is_input_pipe(name):
    return name.endswith("|")


def _stderr_tail(data):
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")
    text = text.strip()
    if len(text) > _STDERR_TAIL:
        text = "..." + text[-_STDERR_TAIL:]
    return text


# --------------------------------------------------------------------------------------------------
# values


def _check_key(key, where):
    if not isinstance(key, str) or not key or any(c.isspace() for c in key):
        raise AvtkError(f"{where}: invalid key {key!r} (keys are non-empty and contain no whitespace)")


def _as_kaldi_array(key, value, where):
    """The array as it will be stored: float32 vector/matrix, or an int32 vector."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim not in (1, 2):
        raise AvtkError(f"{where}: value for {key!r} has shape {array.shape}; only vectors and matrices are stored")
    if array.dtype == np.int32 and array.ndim == 1:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise AvtkError(
            f"{where}: value for {key!r} has dtype {array.dtype}; expected a floating-point vector or matrix "
            "(or a 1-D int32 vector)"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 2 and array.size == 0:
        array = array.reshape(0, 0)  # Kaldi's empty matrix is 0 x 0 (it refuses 0 x n)
    return array


def _float_text(x):
    """Shortest decimal that reads back as the same float32, always with a '.' or an exponent."""
    text = str(np.float32(x))
    if text in ("inf", "-inf", "nan"):
        return text
    if "." not in text:
        if "e" in text:
            mantissa, exponent = text.split("e", 1)
            text = f"{mantissa}.0e{exponent}"
        else:
            text += ".0"
    return text


def _text_value(array):
    """Kaldi text form of a value, starting right after `key ` and ending with a newline."""
    if array.dtype == np.int32:
        return (" ".join(str(int(x)) for x in array) + "\n").encode()
    if array.ndim == 1:
        return (" [ " + "".join(_float_text(x) + " " for x in array) + "]\n").encode()
    if array.size == 0:
        return b" [ ]\n"
    rows = ["\n  " + "".join(_float_text(x) + " " for x in row) for row in array]
    return (" [" + "".join(rows) + "]\n").encode()


# --------------------------------------------------------------------------------------------------
# writing


class TableWriter:
    """`writer[key] = array` into a Kaldi wspecifier; see the module docstring. Use as a context manager."""

    def __init__(self, wspecifier):
        self.wspecifier = wspecifier
        ark, scp, options = parse_specifier(wspecifier, "wspecifier")
        if ark is None:
            raise AvtkError(
                f"invalid wspecifier {wspecifier!r}: an scp is written only alongside an ark, "
                "e.g. 'ark,scp:FILE.ark,FILE.scp'"
            )
        if "t" in options and "b" in options:
            raise AvtkError(f"invalid wspecifier {wspecifier!r}: both 't' (text) and 'b' (binary) given")
        if "f" in options and "nf" in options:
            raise AvtkError(f"invalid wspecifier {wspecifier!r}: both 'f' and 'nf' given")
        self.text = "t" in options
        self.flush = "f" in options
        self.ark_path, self.scp_path = ark, scp
        self._keys = set()
        self._ark = self._scp = None
        self._ark_tmp = self._scp_tmp = None
        self._proc = self._proc_stderr = None
        self._owns_files = False  # True for file outputs (not standard output, not a pipe)
        self._closed = False

        if scp is not None and (ark == "-" or _is_output_pipe(ark) or _is_input_pipe(ark)):
            raise AvtkError(f"invalid wspecifier {wspecifier!r}: an scp needs the ark to be a file")
        if scp is not None and (scp == "-" or _is_output_pipe(scp)):
            raise AvtkError(f"invalid wspecifier {wspecifier!r}: the scp must be a file")
        if scp is not None and os.path.abspath(scp) == os.path.abspath(ark):
            raise AvtkError(f"invalid wspecifier {wspecifier!r}: the ark and the scp are the same file")

        try:
            if ark == "-":
                self._ark = sys.stdout.buffer
                sys.stdout.flush()
            elif _is_output_pipe(ark):
                self._proc_stderr = tempfile.TemporaryFile()
                self._proc = subprocess.Popen(
                    ["bash", "-c", ark[1:].strip()], stdin=subprocess.PIPE, stderr=self._proc_stderr
                )
                self._ark = self._proc.stdin
            else:
                self._owns_files = True
                self._ark_tmp = self._open_tmp(ark)
                self._ark = open(self._ark_tmp, "wb")
                if scp is not None:
                    self._scp_tmp = self._open_tmp(scp)
                    self._scp = open(self._scp_tmp, "w", encoding="utf-8")
        except OSError as err:
            error = self._write_error(err)
            self._discard()
            raise error from None
        except AvtkError:
            self._discard()
            raise

    @staticmethod
    def _open_tmp(path):
        """The name to write `path` under: its temporary name, or `path` itself for /dev/null and the like."""
        if atomic.is_special(path):
            return path
        atomic.prepare(path)
        return temp_name(path)

    def side_path(self, ext):
        """The side file of this output (`avtk.io.atomic.side_path` of the scp, else the ark), or None when
        the output is standard output or a pipe."""
        return atomic.side_path(self.scp_path or self.ark_path, ext) if self._owns_files else None

    def _write_error(self, err, key=None):
        """AvtkError naming the output file (the scp if `err` is about it, else the ark) and the reason."""
        scp_names = {self.scp_path, self._scp_tmp} - {None}
        target = self.scp_path if scp_names & {err.filename, err.filename2} else self.ark_path
        what = f"{key!r} to " if key is not None else ""
        if not self._owns_files:
            return AvtkError(f"cannot write {what}{self.wspecifier!r}: {err.strerror or err}")
        return AvtkError(f"cannot write {what}{target}: {err.strerror or err}")

    def __setitem__(self, key, value):
        self.write(key, value)

    def write(self, key, value):
        """Append one (key, value); a duplicate key is an AvtkError."""
        if self._closed:
            raise AvtkError(f"{self.wspecifier}: writer is closed")
        _check_key(key, self.wspecifier)
        if key in self._keys:
            raise AvtkError(f"{self.wspecifier}: duplicate key {key!r}")
        array = _as_kaldi_array(key, value, self.wspecifier)
        try:
            offset = self._ark.tell() + len(key.encode("utf-8")) + 1 if self._scp is not None else None
            if self.text:
                self._ark.write(key.encode("utf-8") + b" " + _text_value(array))
            else:
                kaldiio.save_ark(self._ark, {key: array})
            if self._scp is not None:
                self._scp.write(f"{key} {self.ark_path}:{offset}\n")
            if self.flush:
                self._ark.flush()
                if self._scp is not None:
                    self._scp.flush()
        except OSError as err:
            raise self._write_error(err, key) from None
        except ValueError as err:  # write to a closed pipe
            raise AvtkError(f"cannot write {key!r} to {self.wspecifier!r}: {err}") from None
        self._keys.add(key)

    def __len__(self):
        return len(self._keys)

    def __contains__(self, key):
        return key in self._keys

    def close(self):
        """Finish: flush, rename the temporary files over the final names (ark, then scp)."""
        if self._closed:
            return
        self._closed = True
        deferred = False
        try:
            if not self._owns_files:  # stdout or a pipe
                self._finish_stream()
                return
            self._ark.close()
            if self._scp is not None:
                self._scp.close()
            # inside an atomic_group, the group renames the files when all its outputs are complete
            deferred = atomic.defer(self.scp_path or self.ark_path, self._publish, self._discard,
                                    also=[self.ark_path] if self.scp_path else [])
            if not deferred:
                for name in (self.ark_path, self.scp_path):
                    if name is not None and not atomic.is_special(name):
                        atomic.refuse_input(name)  # an input of this command is never replaced
                self._publish()
        except OSError as err:
            error = self._write_error(err)
            self._discard()
            raise error from None
        finally:
            if not deferred:
                self._discard()

    def _publish(self):
        """Rename the temporary files over the final names, the ark first (errors as `close`)."""
        try:
            if self.scp_path is not None and os.path.isfile(self.scp_path) and self._scp_tmp != self.scp_path:
                os.remove(self.scp_path)  # an old scp must never describe the new ark
            if self._ark_tmp != self.ark_path:
                os.replace(self._ark_tmp, self.ark_path)
            self._ark_tmp = None
            if self._scp_tmp is not None:
                if self._scp_tmp != self.scp_path:
                    os.replace(self._scp_tmp, self.scp_path)
                self._scp_tmp = None
        except OSError as err:
            error = self._write_error(err)
            self._discard()
            raise error from None

    def _finish_stream(self):
        try:
            self._ark.flush()
        except (OSError, ValueError) as err:
            raise AvtkError(f"cannot write {self.wspecifier!r}: {err}") from None
        finally:
            if self._proc is not None:
                try:
                    self._ark.close()
                except OSError:
                    pass
                rc = self._proc.wait()
                self._proc_stderr.seek(0)
                tail = _stderr_tail(self._proc_stderr.read())
                self._proc_stderr.close()
                self._proc = None
                if rc != 0:
                    raise AvtkError(f"{self.wspecifier}: command exited with status {rc}"
                                    + (f": {tail}" if tail else ""))

    def abort(self):
        """Give up: remove the temporary files; the final names are left untouched."""
        self._closed = True
        self._discard()
        if self._proc is not None:
            try:
                self._ark.close()
            except OSError:
                pass
            self._proc.wait()
            self._proc_stderr.close()
            self._proc = None

    def _discard(self):
        for f in (self._ark, self._scp):
            if f is not None and self._owns_files:
                try:
                    f.close()
                except OSError:
                    pass
        for tmp in (self._ark_tmp, self._scp_tmp):
            if tmp is not None and tmp not in (self.ark_path, self.scp_path) and os.path.lexists(tmp):
                os.remove(tmp)
        self._ark_tmp = self._scp_tmp = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def input_files(*specifiers):
    """The files that the rspecifiers (and plain paths) `specifiers` name: an scp's or ark's path; standard
    input, pipes and None are left out. For `atomic_group(inputs=...)`: an output must not be one of them."""
    files = []
    for spec in specifiers:
        if spec is None:
            continue
        spec = os.fspath(spec)
        if re.match(r"(scp|ark)[,:]", spec):
            ark, scp, _ = parse_specifier(spec, "rspecifier")
            files += [p for p in (ark, scp) if p and p != "-" and not _is_input_pipe(p)]
        elif spec != "-":
            files.append(spec)
    return files


def side_file(wspecifier, ext, given=None, option="--no-face"):
    """`given`, else the side file of the output table `wspecifier`: its scp (else its ark) with the extension
    replaced by `ext` (atomic.side_path). An output to a stream (`-`, a pipe) has no side file: AvtkError
    asking for `option FILE`; so is `given` "-"."""
    if given == "-":
        raise AvtkError(f"{option} -: give a file (standard output is not a list file here)")
    if given:
        return given
    ark, scp, _ = parse_specifier(wspecifier, "wspecifier")
    target = scp or ark
    if target in ("-", "") or _is_output_pipe(target):
        raise AvtkError(f"{wspecifier} writes to a stream: give {option} FILE")
    return atomic.side_path(target, ext)


def open_writer(wspecifier):
    """A `TableWriter` for `wspecifier` (context manager; `writer[key] = array`)."""
    return TableWriter(wspecifier)


# --------------------------------------------------------------------------------------------------
# reading


class _Truncated(Exception):
    pass


class _CheckedFile:
    """A binary file whose multi-byte reads fail at an early end of file.

    kaldiio reads a value's payload with one `read(n)`; a short read would silently give a short vector.
    The 5-byte look-ahead kaldiio does for the value's format flag is exempt (a text value may be shorter).
    kaldiio reads text values byte by byte: there a CR before a LF is dropped, so a text ark with CRLF line
    endings reads as it would with LF (the rule for every text file, avtk.data.table).
    """

    def __init__(self, f):
        self.f = f
        self._pending = b""  # a byte read ahead after a CR that was not followed by LF

    def read(self, size=-1):
        head, self._pending = self._pending, b""
        if head and size == 1:
            return head
        data = head + self.f.read(size - len(head) if size is not None and size > 0 else size)
        if size == 1 and data == b"\r":
            after = self.f.read(1)
            if after == b"\n":
                return after
            self._pending = after
        if size is not None and size > 1 and size != 5 and len(data) < size:
            raise _Truncated(f"unexpected end of file (wanted {size} bytes, got {len(data)})")
        return data

    def seekable(self):
        try:
            return self.f.seekable()
        except (AttributeError, ValueError):
            return False

    def seek(self, *args):
        if self._pending and args[1:] == (1,):
            args = (args[0] - len(self._pending), 1)
        self._pending = b""
        return self.f.seek(*args)

    def tell(self):
        return self.f.tell() - len(self._pending)

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _InputPipe:
    """`COMMAND |` run by bash; its stdout is read, its exit status checked at the end."""

    def __init__(self, command, where):
        self.command, self.where = command, where
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE, stderr=self.stderr)
        self.stdout = self.proc.stdout

    def finish(self, check=True):
        self.stdout.close()
        rc = self.proc.wait() if check else (self.proc.kill() or self.proc.wait())
        self.stderr.seek(0)
        tail = _stderr_tail(self.stderr.read())
        self.stderr.close()
        if check and rc != 0:
            raise AvtkError(f"{self.where}: command '{self.command}' exited with status {rc}"
                            + (f": {tail}" if tail else ""))


def _open_input(name, where):
    """(binary file, pipe or None) for an ark/scp name: a path, '-', or 'COMMAND |'."""
    if name == "-":
        return sys.stdin.buffer, None
    if _is_input_pipe(name):
        pipe = _InputPipe(name[:-1].strip(), where)
        return pipe.stdout, pipe
    try:
        f = open(name, "rb")
    except OSError as err:
        raise AvtkError(f"{where}: cannot read {name}: {err.strerror or err}") from None
    atomic.note_input(name)  # no output of this command may replace it
    return f, None


_SCP_VALUE = re.compile(r"^(?P<path>.*?):(?P<offset>\d+)(?P<range>\[[^\]]*\])?$")


_RANGE_PART = re.compile(r"^\s*(?:(\d+)\s*:\s*(\d+))?\s*$")


def _range_slices(span, shape, where):
    """Slices of a Kaldi scp range `span` (`[r1:r2]` rows, or `[r1:r2,c1:c2]` rows and columns; ends
    inclusive; an empty part is the whole axis) over a matrix of `shape`. A malformed range, a range on a
    value that is not a matrix, or one reaching outside the matrix is an AvtkError `where: ...` naming the
    range and the shape: never a silently shortened value."""
    parts = span[1:-1].split(",")
    found = [_RANGE_PART.match(p) for p in parts]
    if len(parts) > 2 or not all(found) or not any(m.group(1) for m in found):
        raise AvtkError(f"{where}: malformed range {span} (expected [first:last] or [first:last,first:last])")
    if len(shape) != 2:
        raise AvtkError(f"{where}: range {span} on a value of shape {shape}; ranges apply to matrices only")
    slices = []
    for m, size, axis in zip(found, shape, ("rows", "columns")):
        if not m.group(1):
            slices.append(slice(None))
            continue
        a, b = int(m.group(1)), int(m.group(2))
        if not a <= b < size:
            raise AvtkError(f"{where}: range {span} is outside the matrix of shape {tuple(shape)} ({axis} "
                            f"{a}..{b} of 0..{size - 1})")
        slices.append(slice(a, b + 1))
    return tuple(slices)


def check_finite_value(array, where):
    """`array` itself when it holds no NaN or infinity (and, in doubles, no value beyond float32's range, which
    avtk's float32 computations would make infinite); else an AvtkError `where: NaN or infinite value at
    row R (of N), column C` (vectors: `at index I`). Every table value read here passes this check (module
    doc), as must any feature matrix loaded another way (e.g. `kaldiio.load_mat` of one scp value)."""
    if isinstance(array, tuple):  # kaldiio reads a wav file, or a RIFF ark entry, as (rate, samples)
        raise AvtkError(f"{where}: holds audio (a wave file), not a Kaldi matrix or vector")
    values = np.asarray(array)
    if not np.issubdtype(values.dtype, np.floating):
        return array
    bad = ~np.isfinite(values)
    what = "NaN or infinite value"
    if not bad.any() and values.dtype.itemsize > 4:  # doubles: avtk computes in float32, where these are inf
        bad = np.abs(values) > np.finfo(np.float32).max
        what = "value beyond float32's range (avtk computes in float32)"
    if not bad.any():
        return array
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    count = int(bad.sum())
    at = f"at index {first[0]}" if values.ndim == 1 else \
        f"at row {first[0]} (of {values.shape[0]}), column {first[1]}" if values.ndim == 2 else f"at {first}"
    more = f" ({count} such values)" if count > 1 else ""
    raise AvtkError(f"{where}: {what} {at}{more}")


def _checked_ark_key(key, entry, where):
    """A key read from an ark held to the rule of every text file (avtk.data.table.line_problem): a BOM
    before the first key (a text ark saved by an editor) is dropped; an invisible character, a Unicode
    space or a control character in a key is an AvtkError `where: entry N (key 'k'): why ... of the key`."""
    if entry == 1 and key.startswith("\ufeff"):
        key = key[1:]
    problem = line_problem(key)
    if problem:
        raise AvtkError(f"{where}: entry {entry} (key {key!r}): {problem} of the key")
    return key


class TableReader:
    """Iterate (key, array) over a Kaldi rspecifier, in table order; see the module docstring."""

    def __init__(self, rspecifier):
        self.rspecifier = rspecifier
        ark, scp, options = parse_specifier(rspecifier, "rspecifier")
        self.ark, self.scp = ark, scp
        self.permissive = "p" in options
        if ark is not None and not (ark == "-" or _is_input_pipe(ark)) and not os.path.exists(ark):
            raise AvtkError(f"{rspecifier}: cannot read {ark}: No such file or directory")
        if scp is not None and not (scp == "-" or _is_input_pipe(scp)) and not os.path.exists(scp):
            raise AvtkError(f"{rspecifier}: cannot read {scp}: No such file or directory")

    def __iter__(self):
        if self.ark is not None:
            return self._iter_ark()
        return self._iter_scp()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _fail(self, message):
        if self.permissive:
            log.warning("%s (permissive read: stopping here)", message)
            return
        raise AvtkError(message)

    @staticmethod
    def _writable(array):
        if isinstance(array, np.ndarray) and not array.flags.writeable:
            array = array.copy()
        return array

    def _iter_ark(self):
        where = self.rspecifier
        f, pipe = _open_input(self.ark, where)
        checked = _CheckedFile(f)
        seen = {}  # key -> its position in the ark (1-based)
        last = None
        ok = False
        try:
            it = kaldiio.load_ark(checked)
            while True:
                try:
                    key, array = _quiet(next, it)
                except StopIteration:
                    break
                except AvtkError:
                    raise
                except Exception as err:  # kaldiio raises ValueError, AssertionError, RuntimeError, ...
                    after = f" after key {last!r}" if last is not None else " at its first value"
                    self._fail(f"{where}: corrupt or truncated ark {self.ark}{after}: {_describe(err)}")
                    break
                key = _checked_ark_key(key, len(seen) + 1, f"{where}: {self.ark}")
                if key in seen:
                    raise AvtkError(f"{where}: duplicate key {key!r} in {self.ark} (values {seen[key]} and "
                                    f"{len(seen) + 1})")
                seen[key] = len(seen) + 1
                last = key
                yield key, check_finite_value(self._writable(array), f"{where}: key {key!r}")
            ok = True
        finally:
            if pipe is not None:
                pipe.finish(check=ok)
            elif f is not sys.stdin.buffer:
                f.close()

    def _iter_scp(self):
        where = self.rspecifier
        f, pipe = _open_input(self.scp, where)
        fds = {}
        first = {}  # key -> line
        ok = False
        try:
            for lineno, line, problem in decode_lines(f):  # the text rule of avtk.data.table
                if problem:
                    raise AvtkError(f"{self.scp}:{lineno}: {problem}")
                line = line.strip()
                if not line:
                    continue
                fields = line.split(None, 1)
                if len(fields) != 2:
                    raise AvtkError(f"{self.scp}:{lineno}: malformed scp line {line!r} (expected 'key location')")
                key, value = fields
                if first.setdefault(key, lineno) != lineno:
                    raise AvtkError(f"{self.scp}:{lineno}: duplicate key {key!r} (first on line {first[key]})")
                match = _SCP_VALUE.match(value)
                path = match.group("path") if match else value
                if not _is_input_pipe(path) and path not in fds:
                    for old in fds.values():  # one ark open at a time, as scp files are usually ordered
                        old.close()
                    fds.clear()
                    try:
                        fds[path] = _CheckedFile(open(path, "rb"))
                        atomic.note_input(path)  # the ark behind the scp is an input too
                    except OSError as err:
                        self._fail(f"{where}: key {key!r} ({self.scp}:{lineno}): cannot read {path}: "
                                   f"{err.strerror or err}")
                        break
                span = match.group("range") if match else None
                try:  # a range is cut here, after its check (kaldiio clamps one past the end)
                    array = _quiet(kaldiio.load_mat, value[:-len(span)] if span else value, fd_dict=fds)
                except Exception as err:
                    self._fail(f"{where}: key {key!r} ({self.scp}:{lineno}): cannot read {value}: {_describe(err)}")
                    break
                if span:
                    array = array[_range_slices(span, np.shape(array), f"{where}: key {key!r} ({self.scp}:{lineno})")]
                yield key, check_finite_value(self._writable(array), f"{where}: key {key!r} ({self.scp}:{lineno})")
            ok = True
        finally:
            for fd in fds.values():
                fd.close()
            if pipe is not None:
                pipe.finish(check=ok)
            elif f is not sys.stdin.buffer:
                f.close()


def _describe(err):
    if isinstance(err, _Truncated):
        return str(err)
    text = str(err).strip().splitlines()
    text = text[0] if text else ""
    return f"{type(err).__name__}: {text}" if text else f"not a Kaldi matrix or vector ({type(err).__name__})"


def _quiet(function, *args, **kwargs):
    """Call a kaldiio reader without its UserWarnings (they duplicate the errors raised here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return function(*args, **kwargs)


def open_reader(rspecifier):
    """Iterate (key, np.ndarray) over `rspecifier` in table order (kaldiio does the parsing)."""
    return TableReader(rspecifier)


def load_table(rspecifier):
    """The whole table as {key: np.ndarray}; a duplicate key is an AvtkError."""
    table = {}
    for key, array in open_reader(rspecifier):
        if key in table:
            raise AvtkError(f"{rspecifier}: duplicate key {key!r}")
        table[key] = array
    return table


# --------------------------------------------------------------------------------------------------
# bulk reading of vector tables (embeddings)

_VECTOR_FORMATS = {b"FV ": np.dtype("<f4"), b"DV ": np.dtype("<f8")}  # Kaldi binary float/double vectors
_SCP_LINE = re.compile(rb"^[ \t]*(\S+)[ \t]+(\S+):(\d+)[ \t]*$", re.M)  # key ark:offset, nothing else
_NOT_PLAIN = re.compile(rb"[^\t\n\x20-\x7e]")  # text the rule of avtk.data.table may treat specially
_BULK_ROWS = 65536  # vectors gathered per step


class VectorTable(Mapping):
    """A table of vectors held as one matrix, from `load_vectors`: `keys_list` (str, in table order) and
    `matrix` (N, dim) float32; `table[key]` is that key's row (a view). A read-only mapping, so code written
    for the {key: array} of `load_table` reads it too; big consumers use `keys_list`, `matrix` and `rows`."""

    def __init__(self, keys, matrix, index=None):
        self.keys_list, self.matrix = keys, matrix
        self.index = index if index is not None else {k: i for i, k in enumerate(keys)}

    def __getitem__(self, key):
        return self.matrix[self.index[key]]

    def __contains__(self, key):
        return key in self.index

    def __iter__(self):
        return iter(self.keys_list)

    def __len__(self):
        return len(self.keys_list)

    def rows(self, keys):
        """int64 row numbers of `keys` (each must be in the table)."""
        index = self.index
        return np.fromiter((index[k] for k in keys), np.int64, len(keys))


def _scp_entries(scp):
    """(keys, ark paths, path number per entry, offsets) of an scp whose every line is `key ark:offset` in
    plain ASCII with distinct keys; None for anything else (left to the per-entry reader)."""
    with open(scp, "rb") as f:
        data = f.read()
    atomic.note_input(scp)
    if _NOT_PLAIN.search(data):
        return None
    found = _SCP_LINE.findall(data)
    lines = data.split(b"\n")
    if len(found) != len(lines) - lines.count(b""):
        return None  # a malformed or blank-with-spaces line, a range [..], a pipe, a path with spaces
    keys = [k.decode("ascii") for k, _, _ in found]
    names = {}
    pids = np.fromiter((names.setdefault(p, len(names)) for _, p, _ in found), np.int64, len(found))
    offsets = np.array([o for _, _, o in found] or [b"0"]).astype(np.int64)[:len(found)]
    return keys, [p.decode("ascii") for p in names], pids, offsets


def _ark_entries(ark, header_size=10):
    """(keys, [ark], path numbers, offsets) of a binary ark of vectors of one format and size, walked
    header to header; None for anything else."""
    atomic.note_input(ark)
    with open(ark, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            keys, offsets, pos, head, step = [], [], 0, None, 0
            while pos < size:
                space = mm.find(b" ", pos, pos + 4096)
                if space <= pos:
                    return None
                key = mm[pos:space]
                if head is None:
                    head = mm[space + 1:space + 1 + header_size]
                    step = _vector_step(head)
                    if step is None:
                        return None
                elif mm[space + 1:space + 1 + header_size] != head:
                    return None
                if not key.isascii() or len(key.split()) != 1 or len(key.split()[0]) != len(key):
                    return None
                keys.append(key.decode("ascii"))
                offsets.append(space + 1)
                pos = space + 1 + step
    return keys, [ark], np.zeros(len(keys), np.int64), np.array(offsets, np.int64)


def _vector_step(head):
    """Bytes of a binary vector value starting with `head` (its 10 header bytes), or None if it is not one."""
    if len(head) != 10 or head[:2] != b"\0B" or head[2:5] not in _VECTOR_FORMATS or head[5] != 4:
        return None
    return 10 + int.from_bytes(head[6:10], "little") * _VECTOR_FORMATS[head[2:5]].itemsize


def _gather(entries):
    """(N, dim) float32 matrix of the vectors at `entries` (keys, paths, path numbers, offsets) when every one
    has the header of the first and lies inside its file, and all are finite; else None."""
    keys, paths, pids, offsets = entries
    matrix, expected = None, None
    for pid, path in enumerate(paths):
        sel = np.flatnonzero(pids == pid)
        try:
            data = np.memmap(path, np.uint8, "r")
        except (OSError, ValueError):
            return None
        atomic.note_input(path)  # the ark behind the scp is an input too
        offs = offsets[sel]
        if expected is None:
            expected = bytes(data[offs[0]:offs[0] + 10]) if offs[0] < len(data) else b""
            step = _vector_step(expected)
            if step is None:
                return None
            dtype = _VECTOR_FORMATS[expected[2:5]]
            dim = (step - 10) // dtype.itemsize
            matrix = np.empty((len(keys), dim), np.float32)
            header = np.frombuffer(expected, np.uint8)
        if len(data) < step or offs.max() > len(data) - step:
            return None  # truncated: the per-entry reader names the key
        windows = np.lib.stride_tricks.sliding_window_view(data, step)
        for a in range(0, len(sel), _BULK_ROWS):
            rec = windows[offs[a:a + _BULK_ROWS]]
            if not (rec[:, :10] == header).all():
                return None
            values = np.ascontiguousarray(rec[:, 10:]).view(dtype)
            if not np.isfinite(values).all() or (dtype.itemsize > 4 and
                                                 (np.abs(values) > np.finfo(np.float32).max).any()):
                return None  # the per-entry reader names it (check_finite_value)
            matrix[sel[a:a + _BULK_ROWS]] = values
        del windows, data
    return matrix


def load_vectors(rspecifier):
    """The whole table of `rspecifier`: a `VectorTable` (keys, float32 matrix (N, dim)) read in bulk, or,
    for anything the bulk path does not prove clean, the {key: array} of `load_table`.

    The bulk path takes an `scp:` file whose every line is `key ark:offset` (plain ASCII, distinct keys), or
    an `ark:` file, pointing at Kaldi binary float or double vectors (`\\0B` `FV `/`DV ` int32 size marker
    4, int32 dim) of one dimension, every one inside its file and finite: each ark is mapped once and its
    vectors gathered by offset, without a per-entry call. Anything else (text arks, matrices and crop sets,
    pipes, standard input, compressed values, ranges, the `p` option, other text than plain ASCII) and every
    fault (a truncated ark, a NaN, a duplicate key, a malformed line) goes to the per-entry reader
    (`open_reader`), which reads or reports it by the module's rules, with the same messages.

    Every entry must be an embedding: a vector of dimension >= 1, or a crop set (1+K, dim) with >= 1 row and
    dim >= 1 (`extract-embeddings --seed-crops`). An empty entry ((0,), (0, dim), (n, 0)) is an AvtkError
    `RSPECIFIER: utterance 'u': an empty embedding of shape S ...`, the one rule for every command that reads
    embeddings (score, enroll, identify, cleanse and their --mean-from/--cohort tables)."""
    ark, scp, options = parse_specifier(rspecifier, "rspecifier")
    name = scp if scp is not None else ark
    if "p" not in options and name != "-" and not _is_input_pipe(name) and os.path.isfile(name):
        entries = _scp_entries(scp) if scp is not None else _ark_entries(ark)
        if entries is not None and entries[0]:
            index = {k: i for i, k in enumerate(entries[0])}
            matrix = _gather(entries) if len(index) == len(entries[0]) else None
            if matrix is not None:
                if matrix.shape[1] == 0:  # one header for all: every vector is empty
                    raise empty_embedding_error(rspecifier, entries[0][0], (0,))
                return VectorTable(entries[0], matrix, index)
    log.debug("%s: not a clean table of binary vectors; reading it entry by entry", rspecifier)
    table = load_table(rspecifier)
    for key, value in table.items():
        if np.size(value) == 0:
            raise empty_embedding_error(rspecifier, key, np.shape(value))
    return table


def empty_embedding_error(rspecifier, key, shape):
    """The AvtkError for an empty embedding (`shape` with a 0 in it) of utterance `key` of table `rspecifier`:
    the rule of `load_vectors`."""
    return AvtkError(f"{rspecifier}: utterance {key!r}: an empty embedding of shape {tuple(shape)} (an embedding is a "
                    "vector of dimension >= 1, or a crop set (1+K, dim) of >= 1 row)")
