"""Scores files, and fusing the scores several modalities give the same trials.

A scores file has one line per trial, `enroll test score [target|nontarget]` (as `avtk score` writes);
every line of a file has a label or none does. Scores must be finite numbers: `nan`, `inf` and words are
errors naming the file and line.

**Missing modalities** are represented by absence: a trial a modality could not score (no face frames,
say) is a line left out of that modality's scores file. Lines are matched across files by their
(enroll, test) key, and each file must list its trials in the common trials order (a file is a
subsequence of the trials); a key out of order, a duplicate key, or a key not in `--trials` is an error
naming the file and line. Without a trials file, the trials are the union of the files' keys, merged in
order. Fusion methods and how they treat a trial missing some modality: see `avtk.calibration`.
"""
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

from avtk.data.trials import read_trials
from avtk.data.table import numbered_fields
from avtk.errors import AvtkError
from avtk.io.atomic import atomic_open

_LABELS = {"target": 1, "nontarget": 0}
_NAMES = {1: "target", 0: "nontarget"}

log = logging.getLogger(__name__)


@dataclass
class Scores:
    """A scores file: parallel lists of keys, float64 scores, labels (int8 array or None), source lines."""

    path: str
    enroll: list
    test: list
    scores: np.ndarray
    labels: "np.ndarray | None" = None
    lineno: list = field(default_factory=list)

    def __len__(self):
        return len(self.enroll)

    def keys(self):
        return list(zip(self.enroll, self.test))


def read_scores(path):
    """Read a scores file (module doc); a malformed line, a non-finite score, a line with a label in an
    unlabelled file (or the reverse), or a duplicate (enroll, test) key is an AvtkError naming file:line."""
    path = os.fspath(path)
    enroll, test, scores, labels, linenos = [], [], [], [], []
    labelled, first = None, None
    seen = {}
    for lineno, fields, text in numbered_fields(path, "scores "):
        if len(fields) not in (3, 4) or (len(fields) == 4 and fields[3] not in _LABELS):
            raise AvtkError(f"{path}:{lineno}: expected `enroll test score [target|nontarget]`: "
                            f"{text!r}")
        has = len(fields) == 4
        if labelled is None:
            labelled, first = has, lineno
        elif has != labelled:
            raise AvtkError(f"{path}:{lineno}: this line {'has' if has else 'lacks'} a target|nontarget "
                            f"label but line {first} {'has' if labelled else 'lacks'} one")
        try:
            value = float(fields[2])
        except ValueError:
            raise AvtkError(f"{path}:{lineno}: score {fields[2]!r} is not a number") from None
        if not math.isfinite(value):
            raise AvtkError(f"{path}:{lineno}: score {fields[2]!r} is not finite (a missing score is "
                            f"a line left out, not nan)")
        key = (fields[0], fields[1])
        if key in seen:
            raise AvtkError(f"{path}:{lineno}: duplicate trial {key[0]} {key[1]} (first at line "
                            f"{seen[key]})")
        seen[key] = lineno
        enroll.append(fields[0])
        test.append(fields[1])
        scores.append(value)
        labels.append(_LABELS[fields[3]] if has else 0)
        linenos.append(lineno)
    if not enroll:
        raise AvtkError(f"{path}: no scores (empty file)")
    return Scores(path, enroll, test, np.asarray(scores, np.float64),
                  np.asarray(labels, np.int8) if labelled else None, linenos)


def write_scores(path, enroll, test, scores, labels=None):
    """Write `enroll test score [target|nontarget]` lines atomically, in the given order."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for i, (e, t, s) in enumerate(zip(enroll, test, scores)):
            label = f" {_NAMES[int(labels[i])]}" if labels is not None else ""
            f.write(f"{e} {t} {s:.6f}{label}\n")


@dataclass
class Aligned:
    """Several scores files on one trial list: scores (n, m) with NaN where a file lacks the trial."""

    enroll: list
    test: list
    scores: np.ndarray
    labels: "np.ndarray | None"
    lineno: list = field(default_factory=list)  # each trial's line in the trials file (when one was given)


def align(files, trials=None, trials_path="trials"):
    """Put the scores files (Scores) on one trial list.

    trials: a Trials read from `trials_path` (its order and labels win) or None (the union of the files'
    keys, merged in order). Every file must list its keys in that order; labels for the same trial must
    agree across files and with the trials. Errors name the file and line. Trials no file scores have NaN
    in every column.
    """
    if trials is not None:
        keys = list(zip(trials.enroll, trials.test))
        index = {}
        for k, ln in zip(keys, trials.lineno or range(1, len(keys) + 1)):
            if k in index:
                raise AvtkError(f"{trials_path}:{ln}: duplicate trial {k[0]} {k[1]}")
            index[k] = len(index)
    else:
        keys, index = _merge_keys(files)
    n, m = len(keys), len(files)
    scores = np.full((n, m), np.nan)
    labels = np.full(n, -1, np.int8)
    label_from = [None] * n  # (path, line) that set each label, for error messages
    if trials is not None and trials.labels is not None:
        labels[:] = trials.labels
    for j, sf in enumerate(files):
        last = -1
        for i_line, key in enumerate(sf.keys()):
            i = index.get(key)
            ln = sf.lineno[i_line]
            if i is None:
                raise AvtkError(f"{sf.path}:{ln}: trial {key[0]} {key[1]} is not in {trials_path}")
            if i <= last:
                raise AvtkError(f"{sf.path}:{ln}: trial {key[0]} {key[1]} is out of order ({trials_path} "
                                f"has it before {keys[last][0]} {keys[last][1]}, the previous line's trial)")
            last = i
            scores[i, j] = sf.scores[i_line]
            if sf.labels is not None:
                lab = int(sf.labels[i_line])
                if labels[i] >= 0 and labels[i] != lab:
                    other = trials_path if label_from[i] is None else f"{label_from[i][0]}:{label_from[i][1]}"
                    raise AvtkError(f"{sf.path}:{ln}: trial {key[0]} {key[1]} is {_NAMES[lab]} here but "
                                    f"{_NAMES[int(labels[i])]} in {other}")
                if labels[i] < 0:
                    labels[i], label_from[i] = lab, (sf.path, ln)
    enroll = [k[0] for k in keys]
    test = [k[1] for k in keys]
    return Aligned(enroll, test, scores, labels if np.all(labels >= 0) else None,
                   list(trials.lineno) if trials is not None else [])


def _merge_keys(files):
    """The union of the files' keys in a common order: each file's keys are merged into the list so far,
    keys shared with it keeping their order (out of order is an error naming the line), new keys placed
    after the previous shared key."""
    keys = list(files[0].keys())
    index = {k: i for i, k in enumerate(keys)}
    for sf in files[1:]:
        inserts = {}  # position in `keys` after which new keys go (-1 = at the start) -> new keys
        last = -1
        for i_line, key in enumerate(sf.keys()):
            i = index.get(key)
            if i is None:
                inserts.setdefault(last, []).append(key)
                continue
            if i <= last:
                before = files[0].path if sf is files[1] else "the files before it"
                raise AvtkError(f"{sf.path}:{sf.lineno[i_line]}: trial {key[0]} {key[1]} is out of order: "
                                f"{before} has it before {keys[last][0]} {keys[last][1]}, which this file "
                                f"lists earlier (inputs must list the same trials in the same order)")
            last = i
        if inserts:
            merged = list(inserts.get(-1, []))
            for i, k in enumerate(keys):
                merged.append(k)
                merged.extend(inserts.get(i, []))
            keys = merged
            index = {k: i for i, k in enumerate(keys)}
    return keys, index


def read_aligned(paths, trials_path=None, map_paths=False):
    """read_scores each path and align them, on the trials of `trials_path` if given."""
    files = [read_scores(p) for p in paths]
    if not trials_path:
        return align(files)
    return align(files, read_trials(trials_path, map_paths=map_paths), os.fspath(trials_path))


def fallback_counts(available, modalities):
    """{'all': n, name: n trials with only that modality, ..., 'none': n}, plus other subsets as
    'a+b' when there are more than two modalities (one modality: only 'all' and 'none')."""
    counts = {"all": int(available.all(1).sum())}
    for j, name in enumerate(modalities if len(modalities) > 1 else []):
        counts[name] = int((available[:, j] & (available.sum(1) == 1)).sum())
    rest = ~available.all(1) & (available.sum(1) > 1)
    if rest.any():
        uniq, n = np.unique(available[rest], axis=0, return_counts=True)
        for row, c in zip(uniq, n):
            counts["+".join(m for m, a in zip(modalities, row) if a)] = int(c)
    counts["none"] = int((~available.any(1)).sum())
    return counts
