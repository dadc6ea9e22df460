"""Quality measures of utterances, the inputs of quality-measure-function (QMF) calibration (`avtk fuse`).

A quality measure gives every utterance one number; a QMF calibration (`avtk.calibration`) turns each measure
into two features of a trial, the smaller and the larger of its two sides' values. Three measures are read:

  duration      seconds of audio, from a data directory's utt2dur, else its utt2num_frames at FRAME_RATE
                frames per second (Kaldi's 10 ms frame shift, avtk's fbank hop of 160 samples at 16 kHz);
                capped at DURATION_CAP s. It describes the recording, so it enters every calibration.
  cohort_mean   one modality's AS-Norm cohort statistic: the mean of the utterance's top-N cosines against
                the cohort, as `avtk score --cohort ... --write-quality FILE` writes it (`<utt> <mean>` lines,
                sorted by key; read by `read_cohort_means`). It enters the calibrations using that modality.
  face_frames   the number of face frames in the utterance's frames.scp directory (the frames the face
                network embeds, `avtk.face.frames.frame_names`), capped at FRAMES_CAP. It enters the
                calibrations using the face modality it is given to.

The caps follow WeSpeaker (local/score_calibration.sh caps durations at 20 s, `--max_dur 20`); FRAMES_CAP is
the number of frames 20 s give at the seed's one frame per 0.4 s. Every table is read by the shared readers
(avtk.data.datadir, avtk.data.table): malformed lines and non-finite values are AvtkErrors naming file:line.
"""
import math
import os

import numpy as np

from avtk.data import datadir
from avtk.data.table import duplicate_key, read_lines
from avtk.errors import AvtkError
from avtk.io.atomic import atomic_open

DURATION_CAP = 20.0  # seconds (WeSpeaker's --max_dur 20)
FRAMES_CAP = 50.0  # face frames: 20 s at one frame per 0.4 s
FRAME_RATE = 100.0  # utt2num_frames frames per second (10 ms shift)
COSINE_BOUND = 1.0 + 1e-5  # a cohort mean is a mean of float32 cosines: |mean| <= 1 up to rounding

MEASURES = ("duration", "cohort_mean", "face_frames")
CAPS = {"duration": DURATION_CAP, "cohort_mean": None, "face_frames": FRAMES_CAP}


def durations(dd):
    """({utt: seconds}, source path) of a data directory (an `avtk.data.datadir.DataDir`, or a path, which is
    loaded): utt2dur, else utt2num_frames / FRAME_RATE.

    A directory with neither is an AvtkError saying so; malformed lines (a negative or non-finite duration,
    a frame count that is not an integer) are AvtkErrors naming file:line (`avtk.data.datadir.load`)."""
    dd = dd if isinstance(dd, datadir.DataDir) else datadir.load(dd)
    if dd.has("utt2dur"):
        return dict(dd.utt2dur), dd.file("utt2dur")
    if dd.has("utt2num_frames"):
        return {u: n / FRAME_RATE for u, n in dd.utt2num_frames.items()}, dd.file("utt2num_frames")
    raise AvtkError(f"{dd.path}: no utt2dur or utt2num_frames to give the utterances' durations "
                    "(utils/data/get_utt2dur.sh or compute-fbank --write-num-frames write them)")


def face_frame_counts(dd, utts):
    """({utt: number of face frames}, frames.scp path) for the utterances `utts` (an iterable of ids) from the
    frames.scp of a data directory (a DataDir, or a path, which is loaded). An utterance not in frames.scp,
    or whose directory is missing, is an AvtkError naming it."""
    from avtk.face.frames import frame_names

    dd = dd if isinstance(dd, datadir.DataDir) else datadir.load(dd)
    path = dd.file("frames.scp")
    if not dd.has("frames.scp"):
        raise AvtkError(f"{path}: missing (the face_frames quality measure counts the frames it lists)")
    frames = dd.frames
    counts = {}
    for utt in utts:
        if utt not in frames:
            raise AvtkError(f"{path}: no frames directory for utterance {utt!r}")
        counts[utt] = float(len(frame_names(utt, frames[utt])))
    return counts, path


def read_cohort_means(path):
    """{utt: mean of its top-N cohort cosines} from a `<utt> <mean>` table (`write_cohort_means`).

    A line of other than two fields, a value that is not a finite number or outside [-1, 1] (no mean of
    cosines), and a repeated utterance are AvtkErrors naming file:line."""
    path = os.fspath(path)
    values, first = {}, {}
    for line in read_lines(path):
        if len(line.value.split()) != 1:
            raise AvtkError(f"{path}:{line.lineno}: expected `<utt> <cohort mean>`: "
                            f"{line.key} {line.value}")
        try:
            value = float(line.value)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise AvtkError(f"{path}:{line.lineno}: cohort mean {line.value!r} of utterance {line.key!r} is "
                            "not a finite number")
        if abs(value) > COSINE_BOUND:
            raise AvtkError(f"{path}:{line.lineno}: cohort mean {line.value!r} of utterance {line.key!r} is not "
                            "a mean of cosines (they lie in [-1, 1]): not a file of avtk score --write-quality")
        if line.key in values:
            raise duplicate_key(path, line.lineno, line.key, first[line.key])
        values[line.key], first[line.key] = value, line.lineno
    if not values:
        raise AvtkError(f"{path}: no cohort statistics (empty file)")
    return values


def write_cohort_means(path, keys, means):
    """Write `<utt> <mean>` lines (6 decimals), sorted by key in C order, atomically."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{keys[i]} {float(means[i]):.6f}\n" for i in order)


def trial_sides(values, enroll, test, needed, source, where):
    """(n, 2) float64 array of the enrollment and test sides' values of one measure; NaN where not needed.

    values: {utt: value}; needed: boolean (n,) array of the trials that use the measure (those scored by its
    modality). A needed utterance without a value is an AvtkError naming `source`, the utterance, the number of
    such utterances and the first trial's place (`where(i)`, e.g. "trials:12")."""
    n = len(enroll)
    sides = np.full((n, 2), np.nan)
    lacking = {}
    for i in np.flatnonzero(needed):
        for j, utt in enumerate((enroll[i], test[i])):
            value = values.get(utt)
            if value is None:
                lacking.setdefault(utt, int(i))
            else:
                sides[i, j] = value
    if lacking:
        utt, i = next(iter(lacking.items()))
        more = f" ({len(lacking)} utterances in all)" if len(lacking) > 1 else ""
        raise AvtkError(f"{source}: no value for utterance {utt!r} of trial {enroll[i]} {test[i]} "
                        f"({where(i)}){more}")
    return sides
