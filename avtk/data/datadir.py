"""Kaldi data directories: load, validate, fix, subset, combine; split a table into parts.

A data directory is a folder of text tables, one `key value...` line each, sorted by key in C
byte order (what `LC_ALL=C sort -k1,1` gives):

  wav.scp         <recording> <path>  or  <recording> <command> |   (required)
  utt2spk         <utterance> <speaker>                             (required)
  spk2utt         <speaker> <utterance>...     (required; exactly what utt2spk_to_spk2utt makes)
  segments        <utterance> <recording> <start> <end>   (optional; seconds, end > start >= 0)
  utt2dur         <utterance> <seconds>
  utt2num_frames  <utterance> <count>
  feats.scp       <utterance> <rxfilename>
  vad.scp         <utterance> <rxfilename>
  frames.scp      <utterance> <directory of aligned face frames>
  video.scp       <utterance> <video file>                  (input of avtk extract-face-frames)
  raw_frames.scp  <utterance> <directory of unaligned frames> (likewise)
  text            <utterance> [words...]    (never required: speaker recognition is text-free)
  spk2gender      <speaker> m|f
  trials          see avtk.data.trials      (validate checks it; fix/subset/combine leave it alone)

Without segments, wav.scp is keyed by utterance; with segments, by recording, and the segments
name the utterances. Relative audio paths are relative to the directory commands run in (the
recipe directory), as in Kaldi.
"""
import contextlib
import gc
import logging
import math
import os
import random as _random
import shutil
from collections import Counter, namedtuple
from dataclasses import dataclass
from typing import Callable, Optional

from avtk.errors import AvtkError
from avtk.data.table import (decode_lines, duplicate_key, open_binary, read_dict, text_lines, utt2spk_to_spk2utt,
                              write_dict)
from avtk.io.atomic import atomic_open, make_dirs, refuse_input

log = logging.getLogger(__name__)

Segment = namedtuple("Segment", "recording start end")


# --------------------------------------------------------------------------- file formats

def _nonneg_float(fields, what):
    try:
        value = float(fields[0])
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} {fields[0]!r} is not a non-negative number")
    return value


def _parse_dur(fields):
    return _nonneg_float(fields, "duration")


def _parse_num_frames(fields):
    if not fields[0].isdigit():
        raise ValueError(f"frame count {fields[0]!r} is not a non-negative integer")
    return int(fields[0])


def _parse_segment(fields):
    rec = fields[0]
    start = _nonneg_float(fields[1:], "start time")
    end = _nonneg_float(fields[2:], "end time")
    if end <= start:
        raise ValueError(f"end time {fields[2]} <= start time {fields[1]}")
    return Segment(rec, start, end)


def _parse_gender(fields):
    if fields[0] not in ("m", "f"):
        raise ValueError(f"gender {fields[0]!r} is not 'm' or 'f'")
    return fields[0]


@dataclass(frozen=True)
class FileSpec:
    name: str
    keyname: str  # what the key is: utterance, speaker, recording
    layout: str  # the line layout, for messages
    min_fields: int  # counting the key
    max_fields: Optional[int]
    parse: Optional[Callable] = None  # fields after the key -> value; ValueError(message) when bad
    rest: bool = False  # the value is the rest of the line, spaces included (an rxfilename, a path)
    keys_only: bool = False  # free text after the key (`text`): see avtk.data.table


# The value of a table of paths (an rxfilename: a path, `command |`, `file.ark:offset`) is the rest of
# the line after the key, as in Kaldi, so paths may contain spaces; every reader and checker uses this.
SPECS = {
    s.name: s
    for s in [
        FileSpec("wav.scp", "recording", "<recording> <path> or <recording> <command> |", 2, None, rest=True),
        FileSpec("segments", "utterance", "<utterance> <recording> <start> <end>", 4, 4, _parse_segment),
        FileSpec("utt2spk", "utterance", "<utterance> <speaker>", 2, 2, lambda f: f[0]),
        FileSpec("spk2utt", "speaker", "<speaker> <utterance>...", 1, None, list),
        FileSpec("utt2dur", "utterance", "<utterance> <seconds>", 2, 2, _parse_dur),
        FileSpec("utt2num_frames", "utterance", "<utterance> <count>", 2, 2, _parse_num_frames),
        FileSpec("feats.scp", "utterance", "<utterance> <rxfilename>", 2, None, rest=True),
        FileSpec("vad.scp", "utterance", "<utterance> <rxfilename>", 2, None, rest=True),
        FileSpec("frames.scp", "utterance", "<utterance> <directory>", 2, None, rest=True),
        FileSpec("video.scp", "utterance", "<utterance> <video file>", 2, None, rest=True),
        FileSpec("raw_frames.scp", "utterance", "<utterance> <directory>", 2, None, rest=True),
        FileSpec("text", "utterance", "<utterance> [words...]", 1, None, keys_only=True),
        FileSpec("spk2gender", "speaker", "<speaker> m|f", 2, 2, _parse_gender),
    ]
}
# Files with one line per utterance (wav.scp too, when there are no segments).
PER_UTT = ("segments", "utt2dur", "utt2num_frames", "feats.scp", "vad.scp", "frames.scp", "video.scp",
           "raw_frames.scp", "text")
REQUIRED = ("wav.scp", "utt2spk", "spk2utt")
KNOWN = tuple(SPECS)


@dataclass(frozen=True)
class Entry:
    key: str
    value: str  # the text after the key: single-spaced fields, or the rest of the line (FileSpec.rest)
    lineno: int
    parsed: object  # the typed value; None on a malformed line


class _Report:
    """Problems, at most `limit` shown per (file, check); the rest counted in one line per check.
    `total` is the exact number of problems found (each bad line is one)."""

    def __init__(self, limit):
        self.limit = limit
        self.items = []
        self.counts = Counter()
        self.summaries = {}
        self.log_dropped = False

    def add(self, check, message, summary):
        self.counts[check] += 1
        self.summaries[check] = summary
        if self.limit is None or self.counts[check] <= self.limit:
            self.items.append((check, message))

    @property
    def total(self):
        return sum(self.counts.values())

    def problems(self):
        out = [message for _, message in self.items]
        if self.limit is not None:
            for check, n in self.counts.items():
                if n > self.limit:
                    out.append(f"{self.summaries[check]}: {n - self.limit} more not shown ({n} in all)")
        return Problems(out, self.total)


class Problems(list):
    """The lines `validate` prints (problems, then one count per check with more than the limit);
    `total` is the number of problems, which is more than len() when some are only counted."""

    def __init__(self, lines=(), total=None):
        super().__init__(lines)
        self.total = len(self) if total is None else total


def _scan(path, spec, report):
    """Read a table without stopping: {key: Entry} (first occurrence), problems into `report`.

    Lines are decoded by the rule of avtk.data.table (a rejected line is one problem naming file:line)."""
    entries = {}
    dropped = 0  # identical repeated lines
    prev = None
    unsorted = []
    with open_binary(path) as f:
        for lineno, text, problem in decode_lines(f, spec.keys_only):
            if problem:
                report.add((path, "text"), f"{path}:{lineno}: {problem}", f"{path}: lines rejected as text")
                continue
            fields = text.split()
            if not fields:
                continue
            key = fields[0]
            value = text.strip().split(None, 1)[1] if len(fields) > 1 and spec.rest else " ".join(fields[1:])
            n = min(len(fields), 2) if spec.rest else len(fields)
            parsed = None
            if n < spec.min_fields or (spec.max_fields is not None and n > spec.max_fields):
                if spec.max_fields == spec.min_fields:
                    want = f"exactly {spec.min_fields}"
                elif spec.max_fields is None:
                    want = f"at least {spec.min_fields}"
                else:
                    want = f"{spec.min_fields} to {spec.max_fields}"
                report.add(
                    (path, "malformed"),
                    f"{path}:{lineno}: malformed line: expected {want} fields ({spec.layout}), "
                    f"got {n}: {text.strip()!r}",
                    f"{path}: malformed lines",
                )
            elif spec.parse is not None:
                try:
                    parsed = spec.parse(fields[1:])
                except ValueError as err:
                    report.add(
                        (path, "malformed"),
                        f"{path}:{lineno}: malformed line for {spec.keyname} {key!r}: {err} "
                        f"(expected {spec.layout}): {text.strip()!r}",
                        f"{path}: malformed lines",
                    )
            else:
                parsed = value
            if key in entries:
                same = entries[key].value == value
                report.add(
                    (path, "dup-same" if same else "dup"),
                    f"{path}:{lineno}: duplicate key {key!r} (first on line {entries[key].lineno})",
                    f"{path}: duplicate keys",
                )
                if same:
                    dropped += 1
                continue
            if prev is not None and key < prev[0]:
                unsorted.append((lineno, key, prev))
            entries[key] = Entry(key, value, lineno, parsed)
            prev = (key, lineno)
    if unsorted:
        lineno, key, (pkey, plineno) = unsorted[0]
        k = len(unsorted) - 1
        more = f" ({k} more line{'s' if k > 1 else ''} out of order)" if k else ""
        report.add(
            (path, "sort"),
            f"{path}:{lineno}: not sorted: key {key!r} comes after {pkey!r} (line {plineno}){more}; "
            f"sort with LC_ALL=C sort -k1,1, or run utils/fix_data_dir.sh",
            f"{path}: unsorted",
        )
    if dropped and report.log_dropped:
        log.info("%s: dropping %d repeated identical lines", path, dropped)
    return entries


# --------------------------------------------------------------------------- loading

class DataDir:
    """A loaded data directory: `tables[name]` is {key: Entry} for each file present."""

    def __init__(self, path, tables):
        self.path = os.fspath(path)
        self.tables = tables

    def has(self, name):
        return name in self.tables

    def file(self, name):
        return os.path.join(self.path, name)

    def table(self, name):
        """{key: raw value text} of a file, or None when absent."""
        t = self.tables.get(name)
        return None if t is None else {k: e.value for k, e in t.items()}

    def _typed(self, name):
        t = self.tables.get(name)
        return None if t is None else {k: e.parsed for k, e in t.items()}

    @property
    def wav(self):
        """{recording (utterance without segments): path or `command |`}."""
        return self._typed("wav.scp")

    @property
    def utt2spk(self):
        return self._typed("utt2spk")

    @property
    def spk2utt(self):
        """{speaker: [utterance, ...]}: from spk2utt when present, else derived from utt2spk."""
        if "spk2utt" in self.tables:
            return self._typed("spk2utt")
        return utt2spk_to_spk2utt(self.utt2spk)

    @property
    def segments(self):
        """{utterance: Segment(recording, start, end)} or None."""
        return self._typed("segments")

    @property
    def utt2dur(self):
        return self._typed("utt2dur")

    @property
    def utt2num_frames(self):
        return self._typed("utt2num_frames")

    @property
    def feats(self):
        return self.table("feats.scp")

    @property
    def vad(self):
        return self.table("vad.scp")

    @property
    def frames(self):
        """{utterance: directory of face frames} or None."""
        return self.table("frames.scp")

    @property
    def text(self):
        return self.table("text")

    @property
    def spk2gender(self):
        return self._typed("spk2gender")

    @property
    def utts(self):
        return sorted(self.tables["utt2spk"])

    @property
    def spks(self):
        return sorted(set(self.utt2spk.values()))

    def __len__(self):
        return len(self.tables["utt2spk"])

    def __repr__(self):
        return f"DataDir({self.path!r}: {len(self)} utterances, files {', '.join(self.tables)})"


@contextlib.contextmanager
def gc_paused(freeze=False):
    """A block that builds many small long-lived objects (an Entry per line of a million-line table) runs
    with Python's cyclic garbage collector off: otherwise each of its collections scans every object built so
    far, which at VoxCeleb2's size costs more than the reading. With freeze, every object that exists at the
    end is moved out of the collector's sight (`gc.freeze`): no later collection scans them, nor touches
    their pages in forked data-loader workers. The collector is enabled again as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()


def _load(data_dir, skip=(), drop_repeats=False):
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise AvtkError(f"{data_dir}: no such data directory")
    for name in ("utt2spk", "wav.scp"):
        if not os.path.isfile(os.path.join(data_dir, name)):
            raise AvtkError(f"{os.path.join(data_dir, name)}: missing (a data directory needs wav.scp and utt2spk)")
    tables = {}
    report = _Report(limit=1)
    report.log_dropped = drop_repeats
    tolerated = ("sort", "dup-same") if drop_repeats else ("sort",)
    with gc_paused():
        for name, spec in SPECS.items():
            path = os.path.join(data_dir, name)
            if name in skip or not os.path.isfile(path):
                continue
            tables[name] = _scan(path, spec, report)
    fatal = [(check, message) for check, message in report.items if check[1] not in tolerated]
    if fatal:
        first = fatal[0][1]
        total = sum(n for check, n in report.counts.items() if check[1] not in tolerated)
        more = f" (and {total - 1} more problems; run validate-data-dir)" if total > 1 else ""
        raise AvtkError(first + more)
    return DataDir(data_dir, tables)


def read_table(path, name):
    """{key: value} of one data-dir file `name` (a key of SPECS, e.g. "utt2spk") at `path`, by the rules `load`
    applies to it (field counts, text, duplicate keys; unsorted lines are fine): where a directory holds that
    one file without the rest of a data dir (an embeddings dir: utt2spk beside the scps)."""
    report = _Report(limit=1)
    entries = _scan(os.fspath(path), SPECS[name], report)
    fatal = [message for check, message in report.items if check[1] != "sort"]
    if fatal:
        raise AvtkError(fatal[0])
    return {k: e.value for k, e in entries.items()}


def load(data_dir):
    """Load a data directory (wav.scp and utt2spk required; every other known file when present).

    Malformed lines and duplicate keys are an AvtkError naming file:line; unsorted files load fine
    (fix sorts them). Consistency between files is not checked here: that is `validate`.
    """
    return _load(data_dir)


# --------------------------------------------------------------------------- validation

def _preview(keys, n=3):
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def validate(data_dir, check_audio=False, require_feats=False, max_per_check=10):
    """Every problem found in a data directory, as strings naming file:line; [] when it is valid.

    Checks: required files present (wav.scp, utt2spk, spk2utt; feats.scp with require_feats); each
    file sorted by key, without duplicate keys, each line well formed; utt2spk and wav.scp (or
    segments) naming the same utterances; segments naming known recordings, with end > start;
    spk2utt agreeing with utt2spk, and no speaker without utterances; the keys of optional
    per-utterance files a subset of utt2spk's; a trials file's keys being utterances or speakers.
    With check_audio, that every plain-path wav.scp entry exists (`command |` entries are not run), that
    its header is readable and not truncated, and (without segments) that its duration agrees with utt2dur
    within DURATION_TOLERANCE; headers only, so media files (m4a, mp4) are only checked to exist.
    At most max_per_check problems are listed per file and check (None: all), then a count; the
    returned list's `total` is the exact number of problems. Lines are read by the text rule of
    avtk.data.table; in wav.scp and the other tables of paths the path is the rest of the line.
    """
    d = os.fspath(data_dir)
    if not os.path.isdir(d):
        return Problems([f"{d}: no such data directory"])
    report = _Report(max_per_check)
    scans = {}
    for name, spec in SPECS.items():
        path = os.path.join(d, name)
        if os.path.isfile(path):
            scans[name] = _scan(path, spec, report)
    required = list(REQUIRED) + (["feats.scp"] if require_feats else [])
    hints = {
        "spk2utt": f"; make it with: utt2spk_to_spk2utt {os.path.join(d, 'utt2spk')} > {os.path.join(d, 'spk2utt')}",
        "feats.scp": " unless --no-feats",
    }
    for name in required:
        if name not in scans:
            report.add((name, "missing"), f"{os.path.join(d, name)}: missing (required{hints.get(name, '')})", "")

    def p(name):
        return os.path.join(d, name)

    utt2spk = scans.get("utt2spk")
    wav = scans.get("wav.scp")
    segs = scans.get("segments")
    if utt2spk is not None and not utt2spk:
        report.add(("utt2spk", "empty"), f"{p('utt2spk')}: no utterances", "")

    # utterances: utt2spk <-> wav.scp (or segments)
    src_name = "segments" if segs is not None else "wav.scp"
    src = segs if segs is not None else wav
    if utt2spk is not None and src is not None:
        for u, e in utt2spk.items():
            if u not in src and e.parsed is not None:
                report.add(
                    ("utt2spk", "not-in-src"),
                    f"{p('utt2spk')}:{e.lineno}: utterance {u!r} is in utt2spk but not in {src_name}",
                    f"{p('utt2spk')}: utterances not in {src_name}",
                )
        for u, e in src.items():
            if u not in utt2spk and e.parsed is not None:
                report.add(
                    (src_name, "not-in-utt2spk"),
                    f"{p(src_name)}:{e.lineno}: utterance {u!r} is in {src_name} but not in utt2spk",
                    f"{p(src_name)}: utterances not in utt2spk",
                )
    if segs is not None and wav is not None:
        for u, e in segs.items():
            if e.parsed is not None and e.parsed.recording not in wav:
                report.add(
                    ("segments", "rec"),
                    f"{p('segments')}:{e.lineno}: utterance {u!r}: recording {e.parsed.recording!r} is not in wav.scp",
                    f"{p('segments')}: unknown recordings",
                )

    # speakers: utt2spk <-> spk2utt
    expected = {}
    first_line = {}
    if utt2spk is not None:
        for u in sorted(utt2spk):
            e = utt2spk[u]
            if e.parsed is not None:
                expected.setdefault(e.parsed, []).append(u)
                if e.parsed not in first_line or e.lineno < first_line[e.parsed][0]:
                    first_line[e.parsed] = (e.lineno, u)
    spk2utt = scans.get("spk2utt")
    if spk2utt is not None and utt2spk is not None:
        for s, e in spk2utt.items():
            utts = e.parsed or []
            where = f"{p('spk2utt')}:{e.lineno}: speaker {s!r}"
            if not utts:
                report.add(("spk2utt", "empty"), f"{where} has no utterances", f"{p('spk2utt')}: speakers without utterances")
            elif s not in expected:
                report.add(
                    ("spk2utt", "unknown"),
                    f"{where} is not in utt2spk (its utterances here: {_preview(utts)})",
                    f"{p('spk2utt')}: speakers not in utt2spk",
                )
            elif utts != expected[s]:
                only_here = set(utts) - set(expected[s])
                only_utt2spk = set(expected[s]) - set(utts)
                if only_here or only_utt2spk:
                    parts = []
                    if only_here:
                        parts.append(f"only in spk2utt: {_preview(only_here)}")
                    if only_utt2spk:
                        parts.append(f"only in utt2spk: {_preview(only_utt2spk)}")
                    msg = f"{where}: utterances differ from utt2spk ({'; '.join(parts)})"
                else:
                    msg = f"{where}: utterances not sorted or repeated (regenerate spk2utt from utt2spk)"
                report.add(("spk2utt", "differs"), msg, f"{p('spk2utt')}: speakers inconsistent with utt2spk")
        for s in sorted(expected):
            if s not in spk2utt:
                lineno, u = first_line[s]
                report.add(
                    ("utt2spk", "not-in-spk2utt"),
                    f"{p('utt2spk')}:{lineno}: speaker {s!r} (utterance {u!r}) is not in spk2utt",
                    f"{p('utt2spk')}: speakers not in spk2utt",
                )

    # optional per-utterance and per-speaker files
    if utt2spk is not None:
        for name in PER_UTT:
            if name == "segments" or name not in scans:
                continue
            for u, e in scans[name].items():
                if u not in utt2spk and e.parsed is not None:
                    report.add(
                        (name, "subset"),
                        f"{p(name)}:{e.lineno}: utterance {u!r} is not in utt2spk",
                        f"{p(name)}: utterances not in utt2spk",
                    )
        for s, e in scans.get("spk2gender", {}).items():
            if s not in expected:
                report.add(
                    ("spk2gender", "subset"),
                    f"{p('spk2gender')}:{e.lineno}: speaker {s!r} has no utterances in utt2spk",
                    f"{p('spk2gender')}: speakers without utterances",
                )

    if check_audio and wav is not None:
        durs = scans.get("utt2dur") if segs is None else None  # with segments, utt2dur is of the segments
        for r, e in wav.items():
            if e.parsed is None or e.parsed.endswith("|"):
                continue
            what = f"{p('wav.scp')}:{e.lineno}: {'recording' if segs is not None else 'utterance'} {r!r}"
            if not _audio_exists(e.parsed):
                report.add(("wav.scp", "audio"), f"{what}: audio file {e.parsed!r} does not exist",
                           f"{p('wav.scp')}: missing audio files")
                continue
            claimed = durs.get(r) if durs is not None else None
            problem = _audio_header_problem(e.parsed, claimed, p("utt2dur"))
            if problem:
                report.add(("wav.scp", "audio-header"), f"{what}: {problem}",
                           f"{p('wav.scp')}: truncated or unreadable audio files, or durations unlike utt2dur")

    trials_path = p("trials")
    if os.path.isfile(trials_path):
        _check_trials(trials_path, utt2spk, expected, report)
    return report.problems()


DURATION_TOLERANCE = 0.02  # seconds an utt2dur value may differ from the audio (utt2dur has 2 decimals)


def _audio_header_problem(path, claimed, utt2dur_path):
    """What is wrong with an existing audio file by its header alone (avtk.io.audio.file_info: unreadable or
    truncated), or a duration unlike its utt2dur entry `claimed` (an entry with .parsed seconds and .lineno,
    or None); None when nothing is. Media files (m4a, mp4: their length needs decoding) and `file.ark:offset`
    values are not examined."""
    from avtk.io.audio import file_info, is_media

    if path == "-" or not os.path.isfile(path) or is_media(path):
        return None
    try:
        frames, rate = file_info(path)
    except AvtkError as err:
        return str(err)
    seconds = frames / rate
    if claimed is not None and claimed.parsed is not None and abs(seconds - claimed.parsed) > DURATION_TOLERANCE:
        return (f"audio file {path} holds {seconds:.3f} s but {utt2dur_path}:{claimed.lineno} says "
                f"{claimed.parsed:g} s")
    return None


def _audio_exists(path):
    if path == "-" or os.path.isfile(path):
        return True
    head, sep, offset = path.rpartition(":")  # Kaldi's `file.ark:1234` form
    return bool(sep) and offset.isdigit() and os.path.isfile(head)


def _check_trials(path, utt2spk, speakers, report):
    from avtk.data.trials import path_to_utt, read_trials

    try:
        trials = read_trials(path)
    except AvtkError as err:
        report.add(("trials", "read"), str(err), f"{path}: unreadable")
        return
    if utt2spk is None:
        return
    mapped = trials.style == "seed"
    for e, t, lineno in zip(trials.enroll, trials.test, trials.lineno):
        for key in (e, t):
            k = path_to_utt(key) if mapped else key
            if k not in utt2spk and k not in speakers:
                shown = f"{key!r} (utterance {k!r})" if mapped else repr(key)
                report.add(
                    ("trials", "unknown"),
                    f"{path}:{lineno}: {shown} is neither an utterance nor a speaker in utt2spk",
                    f"{path}: unknown keys",
                )


# --------------------------------------------------------------------------- writing

def _select(dd, utts, names=None):
    """The tables of `dd` restricted to `utts` (a set): {name: {key: raw value}}, spk2utt regenerated."""
    names = [n for n in (names or dd.tables) if n in dd.tables and n != "spk2utt"]
    out = {}
    utt2spk = {u: s for u, s in dd.table("utt2spk").items() if u in utts}
    spks = set(utt2spk.values())
    recs = {s.recording for u, s in dd.segments.items() if u in utts} if dd.has("segments") else None
    for name in names:
        table = dd.table(name)
        if name == "wav.scp" and recs is not None:
            out[name] = {k: v for k, v in table.items() if k in recs}
        elif name == "spk2gender":
            out[name] = {k: v for k, v in table.items() if k in spks}
        else:
            out[name] = {k: v for k, v in table.items() if k in utts}
    out["spk2utt"] = utt2spk_to_spk2utt(utt2spk)
    return out


def _write_dir(dst, tables, src_desc, in_place=False):
    """Write the tables into dst; remove known data files there that are not being written (stale). A file
    where dst (or a parent) should be is an AvtkError naming it (`make_dirs`). An input of the command in dst
    (`subset-data-dir --utt-list DST/wav.scp`) is an AvtkError before anything is written or removed
    (`avtk.io.atomic.refuse_input`), unless `in_place` (`fix`, which rewrites its own data dir)."""
    make_dirs(dst)
    if not in_place:
        for name in KNOWN:
            if name in tables or os.path.isfile(os.path.join(dst, name)):
                refuse_input(os.path.join(dst, name))
    for name in KNOWN:
        path = os.path.join(dst, name)
        if name not in tables and os.path.isfile(path):
            log.info("%s: removing stale %s (not in %s)", dst, name, src_desc)
            os.remove(path)
    for name, table in tables.items():
        write_dict(os.path.join(dst, name), table, replaces_input=in_place)


def _same_dir(a, b):
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


# --------------------------------------------------------------------------- fix / subset / combine

def fix(data_dir):
    """Make a data directory consistent in place; return {file: lines removed} ('speakers' too).

    Keeps only utterances present in utt2spk and in every per-utterance file (wav.scp or segments
    with a known recording, utt2dur, feats.scp, frames.scp, ...), drops speakers left without
    utterances, drops recordings no segment uses, sorts every file and regenerates spk2utt. The
    originals are first copied into <dir>/.backup/. Malformed lines or duplicate keys are an error
    (they cannot be fixed automatically); so is a result with no utterances left (nothing changed).
    """
    d = os.fspath(data_dir)
    dd = _load(d, skip=("spk2utt",), drop_repeats=True)
    old_spks = set(dd.utt2spk.values())
    if os.path.isfile(dd.file("spk2utt")):
        old_spks |= set(_scan(dd.file("spk2utt"), SPECS["spk2utt"], _Report(0)))
    keep = set(dd.tables["utt2spk"])
    if dd.has("segments"):
        wav = dd.tables["wav.scp"]
        keep &= {u for u, s in dd.segments.items() if s.recording in wav}
    else:
        keep &= set(dd.tables["wav.scp"])
    for name in PER_UTT:
        if dd.has(name):
            keep &= set(dd.tables[name])
    if not keep:
        raise AvtkError(f"{d}: no utterance is in utt2spk and every per-utterance file; nothing changed")
    tables = _select(dd, keep)
    backup = os.path.join(d, ".backup")
    os.makedirs(backup, exist_ok=True)
    for name in KNOWN:
        if os.path.isfile(dd.file(name)):
            shutil.copy2(dd.file(name), os.path.join(backup, name))
    removed = {}
    for name, table in tables.items():
        if name == "spk2utt":
            continue
        removed[name] = len(dd.tables[name]) - len(table)
        if removed[name]:
            log.info("%s: removed %d of %d lines", dd.file(name), removed[name], len(dd.tables[name]))
    new_spks = set(tables["spk2utt"])
    removed["speakers"] = len(old_spks - new_spks)
    if removed["speakers"]:
        log.info("%s: removed %d speakers without utterances: %s", d, removed["speakers"], _preview(old_spks - new_spks))
    _write_dir(d, tables, d, in_place=True)  # fix-data-dir rewrites the tables it read, on purpose
    log.info(
        "%s: kept %d of %d utterances, %d speakers; originals in %s",
        d, len(keep), len(dd.tables["utt2spk"]), len(new_spks), backup,
    )
    return removed


def subset(src, dst, utt_list=None, spk_list=None, first=None, random=None, seed=0):
    """Write into dst the part of data dir src chosen by exactly one of:

    utt_list: utterance ids; spk_list: speaker ids (all their utterances); first: the first N
    utterances in sorted order; random: N utterances drawn with `seed` (reproducible).
    Every file src has is copied, restricted to the chosen utterances (wav.scp to their recordings,
    spk2gender to their speakers); spk2utt is regenerated. Returns the sorted chosen utterances.
    """
    chosen = [x for x in (utt_list, spk_list, first, random) if x is not None]
    if len(chosen) != 1:
        raise AvtkError("subset: give exactly one of utt_list, spk_list, first, random")
    src, dst = os.fspath(src), os.fspath(dst)
    if _same_dir(src, dst):
        raise AvtkError(f"subset: source and destination are the same directory ({src})")
    dd = load(src)
    utts = dd.utts
    if utt_list is not None:
        wanted = set(utt_list)
        keep = [u for u in utts if u in wanted]
        unknown = wanted - set(keep)
        if unknown:
            log.warning("%d requested utterances are not in %s: %s", len(unknown), dd.file("utt2spk"), _preview(unknown))
    elif spk_list is not None:
        wanted = set(spk_list)
        utt2spk = dd.utt2spk
        keep = [u for u in utts if utt2spk[u] in wanted]
        unknown = wanted - {utt2spk[u] for u in keep}
        if unknown:
            log.warning("%d requested speakers are not in %s: %s", len(unknown), dd.file("utt2spk"), _preview(unknown))
    else:
        n = first if first is not None else random
        if not isinstance(n, int) or n < 0 or n > len(utts):
            raise AvtkError(f"subset: cannot take {n} utterances from {src}, which has {len(utts)}")
        if first is not None:
            keep = utts[:n]
        else:
            keep = sorted(_random.Random(seed).sample(utts, n))
    if not keep:
        raise AvtkError(f"subset: no utterances of {src} selected; {dst} not written")
    _write_dir(dst, _select(dd, set(keep)), src)
    log.info("%s: %d of %d utterances of %s", dst, len(keep), len(utts), src)
    return keep


def combine(dst, srcs):
    """Write into dst the union of data dirs srcs.

    An utterance id in more than one source is an error naming both files and lines; a recording
    (with segments) or speaker gender given differently by two sources is too. Files are combined
    when every source has them (wav.scp, utt2spk, and spk2utt, regenerated, always); others are
    left out with a warning. Sources must all have segments or all lack them.
    """
    dst = os.fspath(dst)
    srcs = [os.fspath(s) for s in srcs]
    if not srcs:
        raise AvtkError("combine: no source directories")
    for s in srcs:
        if _same_dir(s, dst):
            raise AvtkError(f"combine: destination {dst} is also a source")
    dds = [load(s) for s in srcs]
    with_segs = [dd.path for dd in dds if dd.has("segments")]
    if with_segs and len(with_segs) != len(dds):
        without = [dd.path for dd in dds if not dd.has("segments")]
        raise AvtkError(f"combine: {with_segs[0]} has segments but {without[0]} does not; cannot combine")
    names = [n for n in ("utt2spk",) + KNOWN if n != "spk2utt" and all(dd.has(n) for dd in dds)]
    names = list(dict.fromkeys(names))  # utt2spk first: its duplicates give the clearest message
    for n in KNOWN:
        some = [dd.path for dd in dds if dd.has(n)]
        if n != "spk2utt" and some and n not in names:
            log.warning("%s is in %s but not in every source: not combined", n, ", ".join(some))
    tables = {}
    for name in names:
        shared_ok = name == "spk2gender" or (name == "wav.scp" and with_segs)
        merged, origin = {}, {}
        for dd in dds:
            for key, e in dd.tables[name].items():
                if key in merged:
                    where = f"{origin[key]} and {dd.file(name)}:{e.lineno}"
                    if not shared_ok:
                        what = SPECS[name].keyname if name != "wav.scp" else "utterance"
                        raise AvtkError(f"combine: duplicate {what} id {key!r} in {where}")
                    if merged[key] != e.value:
                        raise AvtkError(f"combine: {SPECS[name].keyname} {key!r} differs between {where}")
                    continue
                merged[key] = e.value
                origin[key] = f"{dd.file(name)}:{e.lineno}"
        tables[name] = merged
    tables["spk2utt"] = utt2spk_to_spk2utt(tables["utt2spk"])
    _write_dir(dst, tables, "every source")
    log.info("%s: %d utterances, %d speakers from %d sources", dst, len(tables["utt2spk"]), len(tables["spk2utt"]), len(dds))
    return tables


# --------------------------------------------------------------------------- split

def split_scp(scp, outputs, utt2spk=None):
    """Split the lines of a table into len(outputs) files; return the line count of each.

    Without utt2spk, consecutive runs of lines, sizes differing by at most one. With utt2spk (a
    path), whole speakers: each speaker's lines go to one part, larger speakers placed first into
    the part with the fewest lines so far. Each part keeps the input's line order, so sorted input
    gives sorted parts. Fewer lines (or speakers) than parts, or a key on two lines, is an error.
    """
    scp = os.fspath(scp)
    outputs = [os.fspath(o) for o in outputs]
    if not outputs:
        raise AvtkError("split-scp: no output files")
    lines, first = [], {}
    for lineno, text in text_lines(scp):
        fields = text.split()
        if fields:
            if fields[0] in first:  # a key twice is an error in every reader of tables
                raise duplicate_key(scp, lineno, fields[0], first[fields[0]])
            first[fields[0]] = lineno
            lines.append((fields[0], text, lineno))
    n = len(outputs)
    parts = [[] for _ in range(n)]
    if utt2spk is None:
        if len(lines) < n:
            raise AvtkError(f"split-scp: cannot split the {len(lines)} lines of {scp} into {n} non-empty parts")
        base, extra = divmod(len(lines), n)
        start = 0
        for i in range(n):
            size = base + (1 if i < extra else 0)
            parts[i] = list(range(start, start + size))
            start += size
    else:
        spk_of = read_dict(utt2spk)
        groups = {}
        for i, (key, _, lineno) in enumerate(lines):
            if key not in spk_of:
                raise AvtkError(f"{scp}:{lineno}: utterance {key!r} is not in {utt2spk}")
            groups.setdefault(spk_of[key].split()[0], []).append(i)
        if len(groups) < n:
            raise AvtkError(
                f"split-scp: cannot split the {len(groups)} speakers of {scp} into {n} non-empty parts"
            )
        order = sorted(groups.values(), key=lambda idx: (-len(idx), idx[0]))
        loads = [0] * n
        for idx in order:
            k = min(range(n), key=lambda j: (loads[j], j))
            parts[k].extend(idx)
            loads[k] += len(idx)
        parts = [sorted(p) for p in parts]
    for out, idx in zip(outputs, parts):
        with atomic_open(out, "w", encoding="utf-8") as f:
            for i in idx:
                f.write(lines[i][1] + "\n")
    return [len(p) for p in parts]
