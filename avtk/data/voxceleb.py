"""VoxCeleb data preparation: Kaldi data directories from the seed's lists or from the official release.

Two layouts are read.

seed: the tree and lists of the seed recipe (the synthetic corpus writes the same):

  VOX2/wav/<spk>/<video>/<utt>.wav         VOX2/frame_align/<spk>/<video>/<utt>/NNNN.jpg
  VOX2/train_all.txt          <spk> <wav path> <duration>
  VOX2/train_all_clean.txt    <spk> <wav path> <duration> <audio sim> <visual sim> clean|noisy  (optional)
  VOX1/wav/..., VOX1/frame_align/...
  VOX1/{O,E,H}_list.txt       <wav path> <duration>
  VOX1/{O,E,H}_trials.txt     1|0 <wav path> <wav path>

  -> DATA/vox2_train, DATA/vox2_train_clean (clean lines only), DATA/vox1_O, DATA/vox1_E, DATA/vox1_H

official: the VoxCeleb release as unpacked:

  VOX2_DEV/aac/<spk>/<video>/<utt>.m4a     VOX2_DEV/mp4/<spk>/<video>/<utt>.mp4 (optional)
  VOX1/wav/<spk>/<video>/<utt>.wav
  TRIALS/veri_test2.txt, list_test_all2.txt, list_test_hard2.txt     1|0 <wav path> <wav path>

  -> DATA/vox2_dev, DATA/vox1 (every wav), DATA/vox1_O, DATA/vox1_E, DATA/vox1_H (the utterances each
     trial list uses)

Wav paths are relative to wav/ (aac/ for VoxCeleb2 dev). An utterance's id is `path_to_utt` of that path
(`id00012/21Uxsk56VDQ/00001.wav` -> `id00012-21Uxsk56VDQ-00001`), its speaker the first path component.
Paths written into wav.scp, frames.scp and video.scp are absolute. frames.scp lists the utterances that
have a directory frame_align/<wav path without extension> (a warning counts the others); video.scp the
VoxCeleb2 utterances that have an mp4. Trials are written in Kaldi style (`enroll test target|nontarget`),
in the order of the source list.

Directories are read with one os.scandir per directory, in sorted order (no per-file stat or process),
so the 1.1 M files of VoxCeleb2 dev are listed in seconds to minutes depending on the file system.
Every input is read and checked before anything is written; each file is written atomically.
"""
import functools
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from avtk.data.datadir import KNOWN
from avtk.data.table import numbered_fields, utt2spk_to_spk2utt, write_dict
from avtk.data.trials import Trials, path_to_utt, read_trials, write_trials
from avtk.errors import AvtkError
from avtk.io.atomic import make_dirs

log = logging.getLogger(__name__)

SEED_SETS = ("O", "E", "H")
# The cleaned VoxCeleb1 trial lists (the ones results are reported on), with the originals they replace.
OFFICIAL_TRIALS = (
    ("O", "veri_test2.txt", "veri_test.txt"),
    ("E", "list_test_all2.txt", "list_test_all.txt"),
    ("H", "list_test_hard2.txt", "list_test_hard.txt"),
)
_WRITTEN = tuple(KNOWN) + ("trials",)  # data files a prepared directory is made of (stale ones are removed)


class Utt(NamedTuple):
    """One utterance: its id, speaker, relative path without extension, absolute audio path, duration text."""

    utt: str
    spk: str
    stem: str  # <spk>/<video>/<utt>: names its frame directory and its video
    audio: str
    dur: Optional[str] = None


@dataclass(frozen=True)
class Summary:
    """What one prepared data directory holds."""

    path: str
    utts: int
    spks: int
    trials: int = 0
    frames: int = 0
    videos: int = 0


# --------------------------------------------------------------------------------------------------
# helpers


def _stem(rel):
    """The relative path without its file extension, by the rule of `path_to_utt`."""
    stem, ext = os.path.splitext(rel)
    return rel if "/" in ext else stem


_SPACE = re.compile(r"\s")


def _root(path, option, what):
    """The absolute path of an existing directory given as `option`, or an error saying what to pass."""
    if not os.path.isdir(path):
        raise AvtkError(f"{option} {path}: no such directory (pass {what})")
    return os.path.abspath(path)  # white space is fine: a path is the rest of its wav.scp/frames.scp line


def _frames_root(root, given, option):
    """The frame_align tree to use: `given` (which must exist) or root/frame_align when it exists, else None."""
    if given:
        return _root(given, option, "a frame_align tree: <spk>/<video>/<utt>/NNNN.jpg")
    default = os.path.join(root, "frame_align")
    return default if os.path.isdir(default) else None


def _duration(text):
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _listing(root):
    """A cached function: relative directory under root -> (names of subdirectories, names of files)."""

    @functools.lru_cache(maxsize=64)
    def names(rel_dir):
        path = os.path.join(root, rel_dir)
        dirs, files = set(), set()
        try:
            with os.scandir(path) as it:
                for entry in it:
                    (dirs if entry.is_dir() else files).add(entry.name)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as err:
            raise AvtkError(f"cannot read directory {path}: {err.strerror}") from None
        return frozenset(dirs), frozenset(files)

    return names


@dataclass(frozen=True)
class Found:
    """The stems that have root/<stem><suffix>: `stem in found`, `found.path(stem)`, `len(found)`."""

    root: str
    suffix: str
    stems: frozenset

    def __contains__(self, stem):
        return stem in self.stems

    def __len__(self):
        return len(self.stems)

    def path(self, stem):
        return os.path.join(self.root, stem + self.suffix)

    def subset(self, stems):
        return Found(self.root, self.suffix, self.stems & frozenset(stems))


def find_existing(root, stems, suffix="", directory=False):
    """The stems for which root/<stem><suffix> exists (a directory if `directory`, else a file), as a Found.

    One scandir per parent directory; callers pass stems in sorted order, so the few listings cached at
    a time serve every utterance of a video."""
    root = os.path.abspath(root)
    names = _listing(root)
    found = set()
    for stem in stems:
        parent, _, name = stem.rpartition("/")
        dirs, files = names(parent)
        if name + suffix in (dirs if directory else files):
            found.add(stem)
    return Found(root, suffix, frozenset(found))


def _sorted_entries(path):
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as err:
        raise AvtkError(f"cannot read directory {path}: {err.strerror}") from None


def scan_tree(root, ext):
    """Relative paths `<spk>/<video>/<name><ext>` of the files three levels under root, in sorted order.

    Returns (paths, ignored): entries of another shape (files at the wrong depth, other extensions,
    hidden names) are not listed but counted in `ignored`. One scandir per directory."""
    paths, ignored = [], 0
    for spk in _sorted_entries(root):
        if spk.name.startswith(".") or not spk.is_dir():
            ignored += 1
            continue
        for video in _sorted_entries(spk.path):
            if video.name.startswith(".") or not video.is_dir():
                ignored += 1
                continue
            for utt in _sorted_entries(video.path):
                name = utt.name
                if name.endswith(ext) and len(name) > len(ext) and not name.startswith(".") and utt.is_file():
                    paths.append(f"{spk.name}/{video.name}/{name}")
                else:
                    ignored += 1
    return paths, ignored


# --------------------------------------------------------------------------------------------------
# reading the seed's lists


_LIST_KINDS = {
    # kind: (line layout, fields, index of the wav path, index of the speaker or None)
    "train": ("<spk> <wav path> <duration>", 3, 1, 0),
    "clean": ("<spk> <wav path> <duration> <audio sim> <visual sim> clean|noisy", 6, 1, 0),
    "eval": ("<wav path> <duration>", 2, 0, None),
}


def read_seed_list(path, wav_root, kind):
    """The utterances of one of the seed's lists, sorted by id.

    kind: 'train' (train_all.txt), 'clean' (train_all_clean.txt: only its `clean` lines are returned) or
    'eval' ({O,E,H}_list.txt). Paths are relative to wav_root. A malformed line (field count, duration,
    similarity, flag) is an error naming file:line; so is an utterance listed twice (naming both lines).
    A speaker field that differs from the path's first component is counted in a warning (the path's
    speaker is used, so that utterance ids start with their speaker's id as Kaldi expects)."""
    path = os.fspath(path)
    wav_root = os.path.abspath(wav_root)
    layout, nfields, ipath, ispk = _LIST_KINDS[kind]
    utts, first_line = [], {}
    other_spk, noisy = [], 0
    for lineno, fields, text in numbered_fields(path, "list "):
        where = f"{path}:{lineno}"
        if len(fields) != nfields:
            raise AvtkError(f"{where}: malformed line (expected {nfields} fields, {layout}): {text!r}")
        rel = fields[ipath]
        if rel.startswith("/") or "/" not in rel.strip("/"):
            raise AvtkError(f"{where}: {rel!r} is not a path relative to {wav_root} like "
                            f"id00012/21Uxsk56VDQ/00001.wav: {text!r}")
        if _duration(fields[ipath + 1]) is None:
            raise AvtkError(f"{where}: duration {fields[ipath + 1]!r} is not a non-negative number: {text!r}")
        if kind == "clean":
            for name, value in (("audio similarity", fields[3]), ("visual similarity", fields[4])):
                try:
                    float(value)
                except ValueError:
                    raise AvtkError(f"{where}: {name} {value!r} is not a number: {text!r}") from None
            if fields[5] not in ("clean", "noisy"):
                raise AvtkError(f"{where}: flag {fields[5]!r} is not 'clean' or 'noisy': {text!r}")
        utt = path_to_utt(rel)
        if utt in first_line:
            prev_line, prev_rel = first_line[utt]
            same = "" if prev_rel == rel else f" ({prev_rel} there, {rel} here)"
            raise AvtkError(f"{where}: duplicate utterance {utt!r}{same}: also at line {prev_line}")
        first_line[utt] = (lineno, rel)
        spk = rel.split("/", 1)[0]
        if ispk is not None and fields[ispk] != spk:
            other_spk.append(lineno)
        if kind == "clean" and fields[5] == "noisy":
            noisy += 1
            continue
        utts.append(Utt(utt, spk, _stem(rel), os.path.join(wav_root, rel), fields[ipath + 1]))
    if not first_line:
        raise AvtkError(f"{path}: no utterances (empty list)")
    if other_spk:
        log.warning("%s: %d lines give a speaker other than their path's first component (first at line %d); "
                    "the path's speaker is used", path, len(other_spk), other_spk[0])
    if kind == "clean":
        log.info("%s: %d clean and %d noisy utterances", path, len(utts), noisy)
        if not utts:
            raise AvtkError(f"{path}: no line is flagged clean")
    utts.sort(key=lambda u: u.utt)
    return utts


# --------------------------------------------------------------------------------------------------
# trials


def convert_trials(path, known, allow_missing=False, missing="is not a known utterance"):
    """Read a VoxCeleb trial list (`1|0 <wav path> <wav path>`) as Trials of utterance ids, in file order.

    known: the utterance ids that exist (a set or dict). A path whose id is not known is an error naming
    file:line and the path (`missing` says why); with allow_missing such trials are dropped and counted
    in a warning instead. Returns (trials, number dropped)."""
    path = os.fspath(path)
    raw = read_trials(path)
    if raw.style != "seed":
        raise AvtkError(f"{path}:{raw.lineno[0]}: expected VoxCeleb trial lines `1|0 <wav path> <wav path>`, "
                        f"but the file is in {raw.style} style")
    enroll, test, labels, linenos = [], [], [], []
    dropped, missing_paths, first_drop = 0, set(), None
    for e, t, lab, lineno in zip(raw.enroll, raw.test, raw.labels, raw.lineno):
        ue, ut = path_to_utt(e), path_to_utt(t)
        absent = [k for k, u in ((e, ue), (t, ut)) if u not in known]
        if absent:
            if not allow_missing:
                raise AvtkError(f"{path}:{lineno}: {absent[0]} {missing} (--allow-missing drops such trials)")
            dropped += 1
            missing_paths.update(absent)
            first_drop = first_drop or (lineno, absent[0])
            continue
        enroll.append(ue)
        test.append(ut)
        labels.append(lab)
        linenos.append(lineno)
    if dropped:
        log.warning("%s: dropped %d of %d trials whose wav %s (%d distinct paths; first %s at line %d)",
                    path, dropped, len(raw), missing, len(missing_paths), first_drop[1], first_drop[0])
    if not enroll:
        raise AvtkError(f"{path}: no trials left after dropping those with missing utterances")
    return Trials(enroll, test, np.asarray(labels, dtype=np.int8), "kaldi", linenos), dropped


# --------------------------------------------------------------------------------------------------
# writing


def write_data_dir(path, utts, *, utt2dur=True, frames=None, videos=None, trials=None):
    """Write a Kaldi data directory of `utts` (sorted by id): wav.scp, utt2spk, spk2utt, utt2dur (when
    utt2dur and the durations are known), frames.scp (frames: a Found of frame directories, when given and
    not empty), video.scp (videos: a Found of video files, likewise) and trials (Kaldi style). Data files
    of an earlier run that are not written now are removed. Returns a Summary."""
    path = os.fspath(path)
    make_dirs(path)  # a file in the way is an AvtkError naming it
    spk2utt = utt2spk_to_spk2utt({u.utt: u.spk for u in utts})
    tables = {  # name -> a function giving the (key, value) lines, in sorted order (utts are sorted)
        "wav.scp": lambda: ((u.utt, u.audio) for u in utts),
        "utt2spk": lambda: ((u.utt, u.spk) for u in utts),
        "spk2utt": spk2utt.items,
    }
    if utt2dur and all(u.dur is not None for u in utts):
        tables["utt2dur"] = lambda: ((u.utt, u.dur) for u in utts)
    counts = {}
    for name, found in (("frames.scp", frames), ("video.scp", videos)):
        if found:
            tables[name] = functools.partial(lambda f: ((u.utt, f.path(u.stem)) for u in utts if u.stem in f), found)
            counts[name] = sum(1 for u in utts if u.stem in found)
    for name in _WRITTEN:
        stale = os.path.join(path, name)
        if name not in tables and (name != "trials" or trials is None) and os.path.isfile(stale):
            log.info("%s: removing %s of an earlier run", path, name)
            os.remove(stale)
    for name, lines in tables.items():
        write_dict(os.path.join(path, name), lines(), sort=False)
    if trials is not None:
        write_trials(os.path.join(path, "trials"), trials, style="kaldi")
    summary = Summary(path, len(utts), len(spk2utt), len(trials) if trials is not None else 0,
                      counts.get("frames.scp", 0), counts.get("video.scp", 0))
    parts = [f"{summary.utts} utterances", f"{summary.spks} speakers"]
    if trials is not None:
        parts.append(f"{summary.trials} trials")
    if "frames.scp" in tables:
        parts.append(f"{summary.frames} with face frames")
    if "video.scp" in tables:
        parts.append(f"{summary.videos} with video")
    log.info("%s: %s", path, ", ".join(parts))
    return summary


def _frames_for(utts, frames_root, source):
    """A Found of the utterances' frame directories under frames_root (None when there is no tree)."""
    if frames_root is None:
        log.info("%s: no frame_align directory: no frames.scp", source)
        return None
    found = find_existing(frames_root, (u.stem for u in utts), directory=True)
    lacking = len(utts) - len(found)
    if lacking:
        first = next(u for u in utts if u.stem not in found)
        log.warning("%s: %d of %d utterances have no face frame directory under %s (first: %s); "
                    "they are not in frames.scp", source, lacking, len(utts), frames_root, first.stem)
    return found


# --------------------------------------------------------------------------------------------------
# the seed layout


def prepare_seed(data_dir, vox2=None, vox1=None, vox2_frames=None, vox1_frames=None, allow_missing=False):
    """Prepare DATA/vox2_train[, vox2_train_clean] from the seed's VoxCeleb2 root `vox2` and DATA/vox1_{O,E,H}
    from its VoxCeleb1 root `vox1` (either may be None; they may be the same directory).
    Returns {name: Summary}."""
    if not vox2 and not vox1:
        raise AvtkError("nothing to prepare: pass --vox2 (the seed's VoxCeleb2 root, holding train_all.txt) "
                        "and/or --vox1 (its VoxCeleb1 root, holding O_list.txt and O_trials.txt)")
    jobs = []  # (name, utts, frames, trials): everything is read and checked before anything is written
    if vox2:
        root = _root(vox2, "--vox2", "the seed's VoxCeleb2 root, holding wav/, frame_align/ and train_all.txt")
        listed = os.path.join(root, "train_all.txt")
        if not os.path.isfile(listed):
            raise AvtkError(f"{listed} not found: --vox2 must be the seed's VoxCeleb2 root, which holds "
                            "train_all.txt (`<spk> <wav path> <duration>` lines) and wav/")
        _warn_no_wav(root, "--vox2")
        wav_root = os.path.join(root, "wav")
        frames_root = _frames_root(root, vox2_frames, "--vox2-frames")
        utts = read_seed_list(listed, wav_root, "train")
        jobs.append(("vox2_train", utts, _frames_for(utts, frames_root, listed), None))
        clean_list = os.path.join(root, "train_all_clean.txt")
        if os.path.isfile(clean_list):
            clean = read_seed_list(clean_list, wav_root, "clean")
            unlisted = len({u.utt for u in clean} - {u.utt for u in utts})
            if unlisted:
                log.warning("%s: %d clean utterances are not in %s", clean_list, unlisted, listed)
            jobs.append(("vox2_train_clean", clean, _frames_for(clean, frames_root, clean_list), None))
    if vox1:
        root = _root(vox1, "--vox1", "the seed's VoxCeleb1 root, holding wav/, O_list.txt and O_trials.txt")
        wav_root = os.path.join(root, "wav")
        frames_root = _frames_root(root, vox1_frames, "--vox1-frames")
        found = 0
        for name in SEED_SETS:
            listed = os.path.join(root, f"{name}_list.txt")
            trials_path = os.path.join(root, f"{name}_trials.txt")
            have = [os.path.isfile(p) for p in (listed, trials_path)]
            if not any(have):
                continue
            if not all(have):
                present, absent = (listed, trials_path) if have[0] else (trials_path, listed)
                log.warning("%s found but not %s: Vox1-%s not prepared", present, absent, name)
                continue
            found += 1
            if found == 1:
                _warn_no_wav(root, "--vox1")
            utts = read_seed_list(listed, wav_root, "eval")
            trials, _ = convert_trials(trials_path, {u.utt for u in utts}, allow_missing,
                                       missing=f"is not in {listed}")
            jobs.append((f"vox1_{name}", utts, _frames_for(utts, frames_root, listed), trials))
        if not found:
            raise AvtkError(f"no {{O,E,H}}_list.txt with {{O,E,H}}_trials.txt in {root}: --vox1 must be the seed's "
                            "VoxCeleb1 root, which holds O_list.txt (`<wav path> <duration>` lines) and "
                            "O_trials.txt (`1|0 <wav path> <wav path>` lines)")
    return {name: write_data_dir(os.path.join(data_dir, name), utts, frames=frames, trials=trials)
            for name, utts, frames, trials in jobs}


def _warn_no_wav(root, option):
    if not os.path.isdir(os.path.join(root, "wav")):
        log.warning("%s has no wav/ directory: the paths written into wav.scp do not exist yet (%s)", root, option)


# --------------------------------------------------------------------------------------------------
# the official layout


def scan_utterances(root, ext, what):
    """The utterances of root/<spk>/<video>/<utt><ext>, sorted by id; two paths giving one id is an error."""
    rels, ignored = scan_tree(root, ext)
    if ignored:
        log.warning("%s: ignored %d entries that are not <spk>/<video>/<utt>%s", root, ignored, ext)
    if not rels:
        raise AvtkError(f"{root}: no <spk>/<video>/<utt>{ext} files ({what})")
    seen, utts = {}, []
    for rel in rels:
        utt = path_to_utt(rel)
        if _SPACE.search(rel):
            raise AvtkError(f"{root}: file {rel!r} contains white space, so its utterance id {utt!r} would too, "
                            "and a Kaldi key cannot (rename the file)")
        if utt in seen:
            raise AvtkError(f"{root}: {seen[utt]} and {rel} give the same utterance id {utt!r}")
        seen[utt] = rel
        utts.append(Utt(utt, rel.split("/", 1)[0], _stem(rel), f"{root}/{rel}"))
    utts.sort(key=lambda u: u.utt)
    log.info("%s: %d %s files", root, len(utts), ext)
    return utts


def prepare_official(data_dir, vox2_dev=None, vox1=None, trials_dir=None, vox2_frames=None, vox1_frames=None,
                     allow_missing=False):
    """Prepare DATA/vox2_dev from the unpacked VoxCeleb2 dev set `vox2_dev` (aac/, optional mp4/), and DATA/vox1
    with DATA/vox1_{O,E,H} from the VoxCeleb1 root `vox1` (wav/) and the cleaned trial lists in `trials_dir`
    (default: `vox1`). Returns {name: Summary}."""
    if not vox2_dev and not vox1:
        raise AvtkError("nothing to prepare: pass --vox2-dev (the unpacked VoxCeleb2 dev set, holding aac/) "
                        "and/or --vox1 (the VoxCeleb1 root, holding wav/)")
    if trials_dir and not vox1:
        raise AvtkError("--trials-dir needs --vox1 (the VoxCeleb1 root whose wav/ the trials name)")
    jobs = []
    if vox2_dev:
        root = _root(vox2_dev, "--vox2-dev", "the unpacked VoxCeleb2 dev set, holding aac/<spk>/<video>/<utt>.m4a")
        aac = os.path.join(root, "aac")
        if not os.path.isdir(aac):
            raise AvtkError(f"{aac} not found: --vox2-dev must be the unpacked VoxCeleb2 dev set, which holds "
                            "aac/<spk>/<video>/<utt>.m4a (and optionally mp4/)")
        utts = scan_utterances(aac, ".m4a", "the VoxCeleb2 dev audio")
        mp4 = os.path.join(root, "mp4")
        videos = None
        if os.path.isdir(mp4):
            videos = find_existing(mp4, (u.stem for u in utts), ".mp4")
            if len(videos) < len(utts):
                first = next(u for u in utts if u.stem not in videos)
                log.warning("%s: %d of %d utterances have no mp4 (first: %s.mp4); they are not in video.scp",
                            mp4, len(utts) - len(videos), len(utts), first.stem)
        frames = _frames_for(utts, _frames_root(root, vox2_frames, "--vox2-frames"), aac)
        jobs.append(("vox2_dev", utts, frames, videos, None))
    if vox1:
        root = _root(vox1, "--vox1", "the VoxCeleb1 root, holding wav/<spk>/<video>/<utt>.wav")
        wav = os.path.join(root, "wav")
        if not os.path.isdir(wav):
            raise AvtkError(f"{wav} not found: --vox1 must be the VoxCeleb1 root, which holds "
                            "wav/<spk>/<video>/<utt>.wav (vox1_dev_wav.zip and vox1_test_wav.zip unpacked together)")
        if trials_dir:
            tdir = _root(trials_dir, "--trials-dir", "the directory of veri_test2.txt, list_test_all2.txt, "
                                                     "list_test_hard2.txt")
        else:
            tdir = root
        utts = scan_utterances(wav, ".wav", "the VoxCeleb1 audio")
        frames = _frames_for(utts, _frames_root(root, vox1_frames, "--vox1-frames"), wav)
        jobs.append(("vox1", utts, frames, None, None))
        by_id = {u.utt: u for u in utts}
        found = 0
        for name, cleaned, original in OFFICIAL_TRIALS:
            path = os.path.join(tdir, cleaned)
            if not os.path.isfile(path):
                if os.path.isfile(os.path.join(tdir, original)):
                    log.warning("%s: found %s but not the cleaned %s, which results are reported on: "
                                "Vox1-%s not prepared", tdir, original, cleaned, name)
                continue
            found += 1
            trials, _ = convert_trials(path, by_id, allow_missing, missing=f"does not exist under {wav}")
            used = set(trials.enroll) | set(trials.test)
            subset = [u for u in utts if u.utt in used]
            sub_frames = frames.subset(u.stem for u in subset) if frames else None
            jobs.append((f"vox1_{name}", subset, sub_frames, None, trials))
        if not found:
            log.warning("no VoxCeleb1 trial list (%s) in %s: only vox1 prepared (pass --trials-dir)",
                        ", ".join(c for _, c, _ in OFFICIAL_TRIALS), tdir)
    return {name: write_data_dir(os.path.join(data_dir, name), utts, utt2dur=False, frames=frames, videos=videos,
                                 trials=trials)
            for name, utts, frames, videos, trials in jobs}
