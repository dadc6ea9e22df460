"""Trial lists: which enrollment/test pairs to score, and (when known) whether they match.

Two styles are read, detected per file from its first line; every line of a file must use it:

  kaldi      `<enroll> <test> target|nontarget`
  seed       `1|0 <enroll> <test>`                (1 = same speaker; the seed recipe's VoxCeleb lists)
  unlabeled  `<enroll> <test>`                    (pairs to score, no answers)

Seed-style keys are relative wav paths (`id10001/1zcIwhmdeo4/00001.wav`); `path_to_utt` maps them
to the utterance ids data preparation gives those files (`id10001-1zcIwhmdeo4-00001`).
"""
import os
from collections import Counter
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


# ------------------------------------------------------------------------------------ calibration trials

CALIBRATION_KINDS = ("short-long", "short-short", "long-long")


def draw_calibration_trials(utt2spk, utt2dur, num_trials, seed=0, short=(2.0, 6.0), long_min=6.0,
                            kinds=("short-long",), where="data", utt2session=None):
    """Labelled trials for training a calibration (QMF, `avtk fuse`) from one set of speakers, seeded.

    utt2spk {utt: spk} and utt2dur {utt: seconds} (every utterance of utt2spk). An utterance is short when
    short[0] <= duration < short[1] and long when duration >= long_min. Each kind `a-b` of `kinds` pairs an
    enrollment of class a with a test of class b: short-long (the default) is WeSpeaker's short enrollment
    against long test (tools/generate_calibration_trial.py: 2-6 s against over 6 s, drawn from VoxCeleb2 dev;
    that tool also draws short-short and long-long). `num_trials` is shared as evenly as possible by the kinds,
    and within each kind by target and non-target trials (they differ by at most one). A target trial picks a
    speaker uniformly among those with utterances of both classes (two of the class when a == b), then the two
    utterances uniformly; a non-target trial picks the enrollment speaker and utterance the same way and the
    test speaker uniformly among the other speakers with a b-class utterance. No trial repeats, nor pairs an
    utterance with itself; for short-short and long-long, (x, y) and (y, x) count as the same trial. With
    utt2session ({utt: session}, e.g. the video), a target trial's two utterances come from different
    sessions, as in VoxCeleb's test lists.

    Returns Trials (kaldi style, kind by kind, target and non-target in turn). Asking for more distinct trials
    than the speakers allow is an AvtkError saying how many they allow (`where` names the data).
    """
    if not kinds or any(k not in CALIBRATION_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise AvtkError(f"calibration trial kinds {','.join(kinds)!r}: give distinct kinds among "
                        f"{', '.join(CALIBRATION_KINDS)}")
    lo, hi = short
    classes = {"short": lambda d: lo <= d < hi, "long": lambda d: d >= long_min}
    by_class = {}
    for name, member in classes.items():
        spk2utt = {}
        for utt in sorted(utt2spk):
            if member(utt2dur[utt]):
                spk2utt.setdefault(utt2spk[utt], []).append(utt)
        by_class[name] = spk2utt
    shares = [num_trials // (2 * len(kinds)) + (i < num_trials % (2 * len(kinds))) for i in range(2 * len(kinds))]
    rng = np.random.default_rng(seed)
    enroll, test, labels = [], [], []
    for k, kind in enumerate(kinds):
        a, b = kind.split("-")
        pairs = _draw_kind(rng, by_class[a], by_class[b], a == b, utt2session, shares[2 * k], shares[2 * k + 1],
                           f"{where}: {kind} trials ({a} {_span(classes, a, lo, hi, long_min)} against "
                           f"{b} {_span(classes, b, lo, hi, long_min)})")
        for e, t, lab in pairs:
            enroll.append(e)
            test.append(t)
            labels.append(lab)
    return Trials(enroll, test, np.asarray(labels, np.int8), "kaldi")


def _span(classes, name, lo, hi, long_min):
    return f"{lo:g}-{hi:g} s" if name == "short" else f">= {long_min:g} s"


def _target_pairs(utts_a, utts_b, same_class, session):
    """The number of distinct target trials one speaker's a-class and b-class utterances allow."""
    if session is None:
        return len(utts_a) * (len(utts_a) - 1) // 2 if same_class else len(utts_a) * len(utts_b)
    per_a, per_b = Counter(session[u] for u in utts_a), Counter(session[u] for u in utts_b)
    if same_class:
        return (len(utts_a) * (len(utts_a) - 1) - sum(n * (n - 1) for n in per_a.values())) // 2
    return len(utts_a) * len(utts_b) - sum(n * per_b[v] for v, n in per_a.items())


def _draw_kind(rng, spk_a, spk_b, same_class, session, n_target, n_nontarget, what):
    """[(enroll, test, label)] of one kind: n_target targets then n_nontarget non-targets, interleaved."""
    allowed = {s: _target_pairs(spk_a[s], spk_b[s], same_class, session) for s in spk_a if s in spk_b}
    both = sorted(s for s, n in allowed.items() if n > 0)
    capacity_t = sum(allowed.values())
    if same_class:
        total = sum(len(u) for u in spk_a.values())
        capacity_n = (total * total - sum(len(u) ** 2 for u in spk_a.values())) // 2
    else:
        capacity_n = (sum(len(u) for u in spk_a.values()) * sum(len(u) for u in spk_b.values())
                      - sum(len(spk_a[s]) * len(spk_b.get(s, ())) for s in spk_a))
    for n, capacity, label in ((n_target, capacity_t, "target"), (n_nontarget, capacity_n, "non-target")):
        if n > capacity:
            raise AvtkError(f"{what}: the speakers allow {capacity} distinct {label} trials, {n} asked for "
                            "(ask for fewer trials, or widen the duration classes)")
    seen = set()

    def draw(pick, n, cross_session):
        out, tries = [], 0
        while len(out) < n:
            tries += 1
            if tries > 100 * n + 1000:
                raise AvtkError(f"{what}: drew only {len(out)} distinct trials of {n} asked for after {tries - 1} "
                                "tries (ask for fewer trials)")
            e, t = pick()
            key = (e, t) if not same_class else tuple(sorted((e, t)))
            if e != t and key not in seen and not (cross_session and session[e] == session[t]):
                seen.add(key)
                out.append((e, t))
        return out

    def target():
        s = both[rng.integers(len(both))]
        return spk_a[s][rng.integers(len(spk_a[s]))], spk_b[s][rng.integers(len(spk_b[s]))]

    enrollers = sorted(s for s in spk_a if any(o != s for o in spk_b))
    testers = sorted(spk_b)

    def nontarget():
        s = enrollers[rng.integers(len(enrollers))]
        o = s
        while o == s:
            o = testers[rng.integers(len(testers))]
        return spk_a[s][rng.integers(len(spk_a[s]))], spk_b[o][rng.integers(len(spk_b[o]))]

    targets = draw(target, n_target, session is not None)
    nontargets = draw(nontarget, n_nontarget, False)
    out = []
    for i in range(max(len(targets), len(nontargets))):
        out += [(*targets[i], 1)] if i < len(targets) else []
        out += [(*nontargets[i], 0)] if i < len(nontargets) else []
    return out
