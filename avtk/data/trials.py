"""Trial lists: which enrollment/test pairs to score, and (when known) whether they match.

Two styles are read, detected per file from its first line; every line of a file must use it:

  kaldi      `<enroll> <test> target|nontarget`
  seed       `1|0 <enroll> <test>`                (1 = same speaker; the seed recipe's VoxCeleb lists)
  unlabeled  `<enroll> <test>`                    (pairs to score, no answers)

Seed-style keys are relative wav paths (`id10001/1zcIwhmdeo4/00001.wav`); `path_to_utt` maps them
to the utterance ids data preparation gives those files (`id10001-1zcIwhmdeo4-00001`).
"""
import os
from dataclasses import dataclass, field

import numpy as np

from avtk.data.table import numbered_fields
from avtk.errors import AvtkError
from avtk.io.atomic import atomic_open

STYLES = ("kaldi", "seed", "unlabeled")
_KALDI_LABELS = {"target": 1, "nontarget": 0}
_SEED_LABELS = {"1": 1, "0": 0}


def path_to_utt(path):
    """Utterance id of a relative wav path: drop the extension, then replace each `/` with `-`.

    `id10001/1zcIwhmdeo4/00001.wav` -> `id10001-1zcIwhmdeo4-00001`. Only the last path component's
    extension is removed; a path without one is kept whole (`a/b/c` -> `a-b-c`).
    """
    stem, ext = os.path.splitext(path)
    if "/" in ext:  # the dot belongs to a directory name, not the file
        stem = path
    return stem.replace("/", "-")


@dataclass
class Trials:
    """Parallel lists of trial pairs; `labels[i]` is 1 (target) or 0 (nontarget), or labels is None."""

    enroll: list
    test: list
    labels: "np.ndarray | None" = None
    style: str = "kaldi"
    lineno: list = field(default_factory=list)  # source line of each trial (empty when built in code)

    def __len__(self):
        return len(self.enroll)

    def to_utts(self):
        """A copy with every key mapped through `path_to_utt` (for seed-style lists of wav paths)."""
        return Trials(
            [path_to_utt(k) for k in self.enroll], [path_to_utt(k) for k in self.test],
            None if self.labels is None else self.labels.copy(), self.style, list(self.lineno),
        )


def _style_of(fields):
    """The style a line's fields look like, or None when they fit none."""
    if len(fields) == 3 and fields[2] in _KALDI_LABELS:
        return "kaldi"
    if len(fields) == 3 and fields[0] in _SEED_LABELS:
        return "seed"
    if len(fields) == 2:
        return "unlabeled"
    return None


_FORMS = {
    "kaldi": "`<enroll> <test> target|nontarget`",
    "seed": "`1|0 <enroll> <test>`",
    "unlabeled": "`<enroll> <test>`",
}


def read_trials(path, map_paths=False):
    """Read a trials file of any style (see module doc); with map_paths, apply `path_to_utt` to keys.

    A malformed line, a line in a different style from the file's first line, and a trial (enroll, test)
    that repeats an earlier one are AvtkErrors naming file:line (every command that reads trials applies
    this one rule). An empty file is an error too. Lines are read by the text rule of avtk.data.table.
    """
    path = os.fspath(path)
    enroll, test, labels, linenos = [], [], [], []
    style = None
    first_line = None
    seen = {}
    for lineno, fields, text in numbered_fields(path, "trials "):
        this = _style_of(fields)
        if this is None:
            expected = _FORMS[style] if style else " or ".join(_FORMS.values())
            raise AvtkError(f"{path}:{lineno}: malformed trial line (expected {expected}): {text!r}")
        if style is None:
            style, first_line = this, lineno
        elif this != style:
            raise AvtkError(
                f"{path}:{lineno}: mixed trial styles: this line is {this} style {_FORMS[this]}, "
                f"but line {first_line} is {style} style {_FORMS[style]}: {text!r}"
            )
        if style == "kaldi":
            e, t, lab = fields[0], fields[1], _KALDI_LABELS[fields[2]]
        elif style == "seed":
            lab, e, t = _SEED_LABELS[fields[0]], fields[1], fields[2]
        else:
            e, t, lab = fields[0], fields[1], None
        first = seen.setdefault((e, t), lineno)
        if first != lineno:
            raise AvtkError(f"{path}:{lineno}: duplicate trial {e} {t} (first at line {first})")
        enroll.append(e)
        test.append(t)
        labels.append(lab)
        linenos.append(lineno)
    if style is None:
        raise AvtkError(f"{path}: no trials (empty file)")
    trials = Trials(
        enroll, test, None if style == "unlabeled" else np.asarray(labels, dtype=np.int8), style, linenos
    )
    return trials.to_utts() if map_paths else trials


def write_trials(path, trials, style=None):
    """Write trials atomically in `style` ('kaldi', 'seed'; default: the trials' own style).

    Unlabeled trials (labels None) are always written as `<enroll> <test>` lines.
    """
    style = style or trials.style
    if style not in STYLES:
        raise AvtkError(f"unknown trials style {style!r} (one of {', '.join(STYLES)})")
    if not (len(trials.enroll) == len(trials.test)
            and (trials.labels is None or len(trials.labels) == len(trials.enroll))):
        raise AvtkError(f"cannot write {path}: enroll, test and labels differ in length")
    if trials.labels is None:
        style = "unlabeled"
    elif style == "unlabeled":
        raise AvtkError(f"cannot write {path} unlabeled: the trials have labels (use style 'kaldi' or 'seed')")
    with atomic_open(path, "w", encoding="utf-8") as f:
        for i, (e, t) in enumerate(zip(trials.enroll, trials.test)):
            if style == "unlabeled":
                f.write(f"{e} {t}\n")
                continue
            lab = int(trials.labels[i])
            if lab not in (0, 1):
                raise AvtkError(f"cannot write {path}: trial {i + 1} ({e} {t}) has label {lab}, not 0 or 1")
            if style == "kaldi":
                f.write(f"{e} {t} {'target' if lab else 'nontarget'}\n")
            else:
                f.write(f"{lab} {e} {t}\n")
