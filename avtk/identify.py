"""Speaker identification: enrol speakers into a gallery, then find each test utterance's top-k speakers.

Enrollment. A speaker's model is the mean of the L2-normalised embeddings of its enrollment utterances (any
number, from any number of sessions), each with the gallery's mean vector subtracted first when it has one
(the mean of the enrollment table, or of another table such as the training embeddings: `avtk score
--subtract-mean/--mean-from`). The model is stored as that mean, not renormalised: its norm (at most 1) says
how well the enrollment utterances agree; scoring L2-normalises it. Crop-set embeddings ((1+N, dim), from
extract-embeddings --seed-crops) enrol and are tested with their whole-utterance row.

Files. `Gallery.save(wspecifier)` writes the models as a Kaldi table of float32 vectors keyed by speaker
(`ark,scp:G.ark,G.scp`), and beside it, named after the scp (the ark when there is no scp; as
`avtk.io.atomic.side_path` names side files): `G.spk2utt`, the utterances each speaker was enrolled from, and,
when a mean was subtracted, `G.mean`, a Kaldi ark holding that mean under the key `mean`. `Gallery.load`
reads them back by the same rule, so a test embedding is centred with the mean its gallery was enrolled with.

Scoring. The score of test utterance t against speaker s is the cosine of t's mean-subtracted embedding and
s's model, as `avtk score` gives for a trial. With an AS-Norm cohort (`avtk.scoring.make_cohort`, built with
the gallery's mean), both sides are normalised by their top-n cohort statistics, the speaker model taking
the enrollment side (`avtk.scoring.asnorm`).

Two modalities. An audio gallery and a face gallery of the same speakers give a fused score per (utterance,
speaker): the mean of the two scores, as the seed fuses cosines, or a calibration model's fused LLR. A face
score that is missing (a test utterance without a face embedding, or a speaker enrolled without one) leaves
the audio score alone (`avtk.calibration.FusionModel.apply`: the mean imputes it, a logreg model uses its
audio-only calibration).

Calibration. A logreg model (`avtk fuse --method logreg --model-out`) maps each (utterance, speaker) score to
a natural-log likelihood ratio of "this speaker" against "another speaker"; the output scores are then those
LLRs, and speakers are ranked by them. The model must come from scores made the same way (same mean, same
cohort). It was trained on single-utterance trials, so it applies to speaker models only approximately: a
model averaged over several utterances scores a little higher for its speaker than one utterance does.

Decision. Open set: the top-1 speaker is the answer when its score (the LLR when calibrated) is >= the
threshold, else the utterance is `UNKNOWN`. With a calibration and no threshold, the threshold is the Bayes
threshold ln((1 - prior) / prior) (0 at the default prior 0.5). With neither: closed set, the top-1 speaker.

Output (`Identification.write`), one line per test utterance, in test-table order:
`utt decision spk_1 score_1 ... spk_k score_k`, speakers by falling score (ties by gallery order).
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from avtk.data.table import duplicate_key, line_problem, read_lines, write_dict
from avtk.errors import AvtkError
from avtk.io.ark import load_table, load_vectors, open_writer, parse_specifier
from avtk.io.atomic import atomic_group, atomic_open, side_path
from avtk.scoring import (
    DEFAULT_TOP_N, asnorm, centre_unit, check_embeddings, cohort_stats, embedding_matrix, unit,
)

log = logging.getLogger(__name__)

UNKNOWN = "<unknown>"  # the decision for a test utterance whose best score is below the threshold
CHUNK_SCORES = 1 << 22  # the most (utterance, speaker) scores held at once
MIN_MODEL_NORM = 1e-6  # a speaker model shorter than this: its enrollment embeddings cancel out


def _preview(keys, n=5):
    return ", ".join(repr(k) for k in keys[:n]) + (", ..." if len(keys) > n else "")


def check_id(name, source, what):
    """AvtkError unless `name` (a speaker or utterance id given to the Python API; str() of it is used) is what
    a table line can hold as a key: not empty, no white space, no control or invisible characters
    (`avtk.data.table.line_problem`)."""
    text = str(name)
    problem = "it is empty" if not text else ("it holds white space" if any(c.isspace() for c in text)
                                              else line_problem(text))
    if problem:
        raise AvtkError(f"{source}: {what} {name!r} cannot be a table key: {problem}")


def _float_rows(value, label):
    """float32 array of embeddings given as numbers (one vector, a list of them or an (n, dim) array); values
    that are not numbers are an AvtkError naming `label`."""
    try:
        x = np.asarray(value, np.float32)
    except (TypeError, ValueError) as err:
        raise AvtkError(f"{label}: embeddings must be numbers ({err})") from None
    return x.reshape(1, -1) if x.ndim == 1 else x


def _whole_rows(matrix):
    """Vectors (n, dim) of an embedding matrix: the whole-utterance row 0 of crop sets (n, 1+N, dim)."""
    return np.ascontiguousarray(matrix[:, 0] if matrix.ndim == 3 else matrix)


# --------------------------------------------------------------------------------------------------
# enrollment lists


def read_enrollment(spk2utt=None, utt2spk=None):
    """{speaker: [(utt, lineno), ...]} from a Kaldi spk2utt or utt2spk file (give one), in file order.

    Errors (AvtkError naming file:line): a spk2utt speaker with no utterances, a speaker or an utterance listed
    twice (an utterance enrolls one speaker, once), a malformed utt2spk line, a speaker named `UNKNOWN`.
    """
    if (spk2utt is None) == (utt2spk is None):
        raise AvtkError("give the enrollment lists as spk2utt or as utt2spk (one of them)")
    path = spk2utt or utt2spk
    speakers, first_speaker, owner = {}, {}, {}
    for line in read_lines(path, min_fields=1):
        if spk2utt:
            spk, utts = line.key, line.value.split()
            if not utts:
                raise AvtkError(f"{path}:{line.lineno}: speaker {spk!r} has no utterances")
            if spk in speakers:
                raise duplicate_key(path, line.lineno, spk, first_speaker[spk])
        else:
            fields = line.value.split()
            if len(fields) != 1:
                raise AvtkError(f"{path}:{line.lineno}: malformed utt2spk line (expected `utt spk`)")
            spk, utts = fields[0], [line.key]
        if spk == UNKNOWN:
            raise AvtkError(f"{path}:{line.lineno}: {UNKNOWN!r} is the decision for no speaker, not a speaker id")
        for utt in utts:
            if utt in owner:
                was, lineno = owner[utt]
                raise AvtkError(f"{path}:{line.lineno}: utterance {utt!r} is listed twice (first for speaker "
                                f"{was!r} on line {lineno})")
            owner[utt] = (spk, line.lineno)
        first_speaker.setdefault(spk, line.lineno)
        speakers.setdefault(spk, []).extend((utt, line.lineno) for utt in utts)
    if not speakers:
        raise AvtkError(f"{path}: no speakers to enrol (empty file)")
    return speakers


# --------------------------------------------------------------------------------------------------
# the gallery


class Gallery:
    """Enrolled speakers: `speakers` (list of str), `models` (S, dim) float32 (the mean of each speaker's
    L2-normalised, mean-subtracted enrollment embeddings), `mean` (dim,) float32 or None (subtracted from
    every embedding before it is normalised: enrollment, test and cohort alike), `spk2utt` ({speaker: [utt,
    ...]} or None). See the module doc."""

    def __init__(self, speakers, models, mean=None, spk2utt=None):
        self.speakers = list(speakers)
        self.models = np.asarray(models, np.float32).reshape(len(self.speakers), -1)
        self.mean = None if mean is None else np.asarray(mean, np.float32).reshape(-1)
        self.spk2utt = spk2utt

    def __len__(self):
        return len(self.speakers)

    @property
    def dim(self):
        return self.models.shape[1]

    # ---------------------------------------------------------------------------------------- enrolling

    @classmethod
    def enroll(cls, enrollment, mean=None, model=None, source="enrollment"):
        """A gallery from {speaker: embeddings} (Python API).

        Each value is one embedding (dim,), a list of them, or an (n, dim) array: float, any dtype. With
        `model` (from `avtk.load_model`), the values are instead the model's inputs, one or a list, embedded
        here (`embed_inputs`): recordings for a speaker model, face inputs for a face model. `mean` (dim,) is
        subtracted from every embedding first. A NaN, infinite or all-zero embedding, or a speaker with none,
        is an AvtkError naming the speaker.
        """
        if not isinstance(enrollment, Mapping) or not enrollment:
            raise AvtkError(f"{source}: give a non-empty mapping of speaker -> embeddings")
        speakers, rows, owner, given = [], [], [], {}
        for spk, value in enrollment.items():
            check_id(spk, source, "speaker id")
            if str(spk) in given:
                raise AvtkError(f"{source}: speaker ids {given[str(spk)]!r} and {spk!r} are the same text, "
                                f"{str(spk)!r}: one speaker, listed twice")
            given[str(spk)] = spk
            if str(spk) == UNKNOWN:
                raise AvtkError(f"{source}: {UNKNOWN!r} is the decision for no speaker, not a speaker id")
            if model is not None:
                value = embed_inputs(model, value, f"{source}: speaker {spk!r}")
            x = _float_rows(value, f"{source}: speaker {spk!r}")
            if x.ndim != 2 or len(x) == 0 or x.shape[1] == 0:
                raise AvtkError(f"{source}: speaker {spk!r} has no embeddings of shape (dim,) or (n, dim) "
                                f"(got shape {np.shape(value)})")
            check_embeddings(x, [f"{spk} #{i + 1}" for i in range(len(x))], source)
            speakers.append(str(spk))
            rows.append(x)
            owner.extend([len(speakers) - 1] * len(x))
        dims = {r.shape[1] for r in rows}
        if len(dims) > 1:
            raise AvtkError(f"{source}: embeddings of different dimensions {sorted(dims)}")
        matrix = np.concatenate(rows)
        keys = [f"{speakers[o]} #{i + 1}" for i, o in enumerate(owner)]
        models = _speaker_means(matrix, np.asarray(owner), speakers, mean, keys, source)
        return cls(speakers, models, mean)

    @classmethod
    def enroll_table(cls, table, enrollment, mean=None, source="embeddings", where="enrollment",
                     allow_missing=False):
        """A gallery from an embedding table ({utt: vector or crop set}, e.g. `load_vectors`) and the
        `read_enrollment` lists of file `where`. An enrollment utterance with no embedding in the table is an
        AvtkError naming where:line, the utterance and the speaker; with allow_missing it is left out (one
        WARNING), and so is a speaker left with none. Embeddings as `avtk.scoring.embedding_matrix` (NaN,
        infinite or all-zero values are errors naming the utterance)."""
        total = sum(len(items) for items in enrollment.values())
        missing = [(spk, utt, n) for spk, items in enrollment.items() for utt, n in items if utt not in table]
        if missing and not allow_missing:
            spk, utt, lineno = missing[0]
            more = (f" ({len(missing)} of {total} enrollment utterances have none: "
                    f"{_preview([m[1] for m in missing])})") if len(missing) > 1 else ""
            raise AvtkError(f"{where}:{lineno}: enrollment utterance {utt!r} of speaker {spk!r} has no embedding "
                            f"in {source}{more} (--allow-missing leaves such utterances out)")
        gone = {utt for _, utt, _ in missing}
        kept = {spk: [utt for utt, _ in items if utt not in gone] for spk, items in enrollment.items()}
        empty = [spk for spk, utts in kept.items() if not utts]
        kept = {spk: utts for spk, utts in kept.items() if utts}
        if missing:
            log.warning("%s: %d of %d enrollment utterances of %s have no embedding and are left out (e.g. %r)%s",
                        source, len(missing), total, where, missing[0][1],
                        f"; {len(empty)} speakers have none left and are not enrolled: {_preview(empty)}"
                        if empty else "")
        if not kept:
            raise AvtkError(f"{where}: none of its {total} enrollment utterances has an embedding in {source}")
        speakers = list(kept)
        keys = [utt for utts in kept.values() for utt in utts]
        owner = np.repeat(np.arange(len(speakers)), [len(kept[s]) for s in speakers])
        matrix = _whole_rows(embedding_matrix(table, keys, where, source))
        models = _speaker_means(matrix, owner, speakers, mean, keys, source)
        return cls(speakers, models, mean, kept)

    # ---------------------------------------------------------------------------------------- files

    @staticmethod
    def side_files(spec, kind):
        """(spk2utt path, mean path) beside the table of `spec` (see the module doc), or (None, None) for
        standard input/output and pipes."""
        ark, scp, _ = parse_specifier(spec, kind)
        name = scp or ark
        if name == "-" or name.startswith("|") or name.endswith("|"):
            return None, None
        return side_path(name, ".spk2utt"), side_path(name, ".mean")

    def save(self, wspecifier):
        """Write the models to `wspecifier` and the side files (spk2utt, mean) as one atomic group; a side
        file of an earlier gallery that this one lacks is removed."""
        spk2utt_path, mean_path = self.side_files(wspecifier, "wspecifier")
        ark, scp, _ = parse_specifier(wspecifier, "wspecifier")
        for table in (ark, scp):
            for side in (spk2utt_path, mean_path):
                if table and side and os.path.abspath(table) == os.path.abspath(side):
                    raise AvtkError(f"{wspecifier}: {table} is also the name of the gallery's side file {side} "
                                    "(the speakers' utterance lists and the mean are written beside the table): "
                                    "name the table otherwise")
        with atomic_group(spk2utt_path, mean_path):
            with open_writer(wspecifier) as writer:
                for spk, model in zip(self.speakers, self.models):
                    writer[spk] = model
            for path, present in ((spk2utt_path, self.spk2utt), (mean_path, self.mean is not None)):
                if path is not None and not present and os.path.isfile(path):
                    os.remove(path)  # it would describe another gallery
            if spk2utt_path is not None and self.spk2utt:
                write_dict(spk2utt_path, self.spk2utt, sort=False)
            if mean_path is not None and self.mean is not None:
                with open_writer(f"ark:{mean_path}") as writer:
                    writer["mean"] = self.mean
        if spk2utt_path is None:
            log.warning("%s is a stream: no spk2utt or mean is written beside it", wspecifier)

    @classmethod
    def load(cls, rspecifier):
        """The gallery of `rspecifier` (speaker vectors) and its side files, if there: a spk2utt whose speakers
        differ from the table's, a mean file without exactly one vector `mean` of the models' dimension, and
        a NaN, infinite or all-zero model are AvtkErrors naming the file."""
        table = load_vectors(rspecifier)
        speakers = list(table)
        if not speakers:
            raise AvtkError(f"{rspecifier}: empty gallery")
        models = embedding_matrix(table, speakers, rspecifier, rspecifier)
        if models.ndim != 2:
            raise AvtkError(f"{rspecifier}: a gallery holds one vector per speaker, not crop sets")
        spk2utt_path, mean_path = cls.side_files(rspecifier, "rspecifier")
        spk2utt = mean = None
        if spk2utt_path and os.path.isfile(spk2utt_path):
            lists = read_enrollment(spk2utt=spk2utt_path)
            if set(lists) != set(speakers):
                odd = sorted(set(lists) ^ set(speakers))
                raise AvtkError(f"{spk2utt_path}: its speakers are not those of {rspecifier} ({len(lists)} and "
                                f"{len(speakers)}; in one only: {_preview(odd)}): written by another enrollment?")
            spk2utt = {spk: [utt for utt, _ in lists[spk]] for spk in speakers}
        if mean_path and os.path.isfile(mean_path):
            values = load_table(f"ark:{mean_path}")
            mean = values.get("mean")
            if len(values) != 1 or mean is None or np.shape(mean) != (models.shape[1],):
                got = ", ".join(f"{k!r} {np.shape(v)}" for k, v in values.items()) or "none"
                raise AvtkError(f"{mean_path}: expected one vector 'mean' of dimension {models.shape[1]} (the "
                                f"gallery's), got {got}")
            log.info("test embeddings are centred with the gallery's mean (%s)", mean_path)
        return cls(speakers, models, mean, spk2utt)

    # ---------------------------------------------------------------------------------------- identifying

    def identify(self, test, top_k=5, *, cohort=None, top_n=DEFAULT_TOP_N, face_gallery=None, face=None,
                 face_cohort=None, calibration=None, modalities=None, threshold=None, prior=None,
                 source="test embeddings", face_source="face embeddings", model=None, face_model=None):
        """The top-k speakers of every test embedding, and a decision (module doc), as an `Identification`.

        test         {utt: embedding} (a table from `load_vectors`), an (n, dim) array or one (dim,) vector
                     (utterances then named "0", "1", ...); with `model` (`avtk.load_model`'s), the model's
                     inputs instead: {utt: input}, a list of inputs or one (`embed_inputs`)
        cohort       AS-Norm cohort, unit rows (K, dim) from `avtk.scoring.make_cohort` with this gallery's
                     mean; top_n its statistics' size
        face_gallery, face, face_cohort
                     a face gallery of the same speakers (some may be missing) and the test utterances' face
                     embeddings ({utt: embedding}; utterances may be missing), for fused identification
        calibration  an `avtk.calibration.FusionModel` (logreg) or its file: scores become LLRs
        modalities   the calibration's names for (audio[, face]); default: its modalities in order
        threshold    open-set threshold on the output scores; prior: the Bayes threshold's prior (calibrated)
        face_model   a face model: `face` holds its inputs ({utt: input}) instead of embeddings
        """
        if model is not None:
            test = _embedded(model, test, source)
        if face_model is not None and face is not None:
            face = _embedded(face_model, face, face_source)
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise AvtkError(f"top_k must be an integer >= 1, got {top_k!r}")
        for name, value in (("threshold", threshold), ("prior", prior)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))):
                raise AvtkError(f"{name} {value!r}: must be a number")
        if (face_gallery is None) != (face is None):
            raise AvtkError("fused identification needs both a face gallery and the test faces")
        if face_cohort is not None and face_gallery is None:
            raise AvtkError("a face cohort needs a face gallery")
        fusion, columns = _calibration(calibration, modalities, face_gallery is not None)
        if prior is not None and fusion is None:
            raise AvtkError("a prior sets the threshold of calibrated scores: it needs a calibration")
        if prior is not None and threshold is not None:
            raise AvtkError("a prior (the Bayes threshold) and a threshold are alternatives: give one")
        if threshold is not None and not math.isfinite(threshold):
            raise AvtkError(f"threshold {threshold}: must be a finite number")
        if fusion is not None and threshold is None:
            p = 0.5 if prior is None else prior
            if not 0 < p < 1:
                raise AvtkError(f"prior {p}: must be in (0, 1)")
            threshold = math.log((1 - p) / p)
        keys, matrix = _test_rows(test, source)
        scorer = _Scorer(self, keys, matrix, cohort, top_n, source)
        face_scorer = None
        if face_gallery is not None:
            if not isinstance(face, Mapping):
                raise AvtkError(f"{face_source}: give the test faces as {{utt: face embedding}} (or, with a face "
                                "model, {utt: face input})")
            extra = sorted(set(face_gallery.speakers) - set(self.speakers))
            if extra:
                raise AvtkError(f"the face gallery has speakers that the audio gallery has not: {_preview(extra)}")
            fkeys = [k for k in keys if k in face]
            if not fkeys:
                raise AvtkError(f"{face_source}: none of the {len(keys)} test utterances has a face embedding")
            fmatrix = _whole_rows(embedding_matrix(face, fkeys, face_source, face_source))
            face_scorer = _Scorer(face_gallery, fkeys, fmatrix, face_cohort, top_n, face_source)
            face_row = {k: i for i, k in enumerate(fkeys)}
            frows = np.array([face_row.get(k, -1) for k in keys])
            fcol = {s: j for j, s in enumerate(face_gallery.speakers)}
            fcols = np.array([fcol.get(s, -1) for s in self.speakers])
            log.info("fused: %d of %d test utterances have a face, %d of %d speakers a face model",
                     len(fkeys), len(keys), int((fcols >= 0).sum()), len(fcols))
            if fusion is None:
                from avtk.calibration import train_model

                fusion, columns = train_model("mean", ["audio", "face"], np.zeros((0, 2))), [0, 1]
        k = min(int(top_k), len(self.speakers))
        step = max(1, CHUNK_SCORES // len(self.speakers))
        top_idx = np.empty((len(keys), k), np.int64)
        top = np.empty((len(keys), k))
        for a in range(0, len(keys), step):
            b = min(len(keys), a + step)
            scores = scorer.rows(np.arange(a, b))
            if fusion is not None:
                cols = [scores]
                if face_scorer is not None:
                    fscores = np.full(scores.shape, np.nan)
                    have, fc = np.flatnonzero(frows[a:b] >= 0), np.flatnonzero(fcols >= 0)
                    if len(have):
                        fscores[np.ix_(have, fc)] = face_scorer.rows(frows[a:b][have])[:, fcols[fc]]
                    cols.append(fscores)
                scores = _apply(fusion, columns, cols)
            top_idx[a:b], top[a:b] = top_candidates(scores, k)
        speakers = np.asarray(self.speakers, dtype=object)[top_idx]
        if threshold is None:
            decisions = list(speakers[:, 0])
        else:
            decisions = [s if v >= threshold else UNKNOWN for s, v in zip(speakers[:, 0], top[:, 0])]
        calibrated = calibration is not None
        return Identification(keys, speakers.tolist(), top, decisions, calibrated, threshold)


def embed_inputs(model, inputs, label="inputs"):
    """float32 (n, dim) embeddings of a list (or tuple) of model inputs, or of one input (anything else), by an
    `avtk.load_model` model: a speaker model's `embed_batch` (each a path, or a waveform at 16 kHz, 1-D or
    (channels, samples)), or a face model's `embed_faces` of each (a frames directory, a video, or an array of
    aligned uint8 RGB images (n, 112, 112, 3)). Their errors are the models' (AvtkError naming the input);
    `label` names the inputs."""
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not items:
        raise AvtkError(f"{label}: nothing to embed")
    if hasattr(model, "embed_batch"):
        return np.asarray(model.embed_batch(items), np.float32)
    if hasattr(model, "embed_faces"):
        return np.stack([model.embed_faces(x, label=f"{label} item {i + 1}") for i, x in enumerate(items)])
    raise AvtkError(f"{label}: {model!r} is neither a speaker model (embed_batch) nor a face model (embed_faces)")


def _embedded(model, inputs, label):
    """Test inputs embedded by `model`: {utt: input} -> {utt: embedding}; a list or one input -> (n, dim)."""
    if isinstance(inputs, Mapping):
        keys = list(inputs)
        return dict(zip(keys, embed_inputs(model, [inputs[k] for k in keys], label))) if keys else {}
    return embed_inputs(model, inputs, label)


def top_candidates(scores, k):
    """(indices, values), (r, k) int64 and float64: the k largest of each row of `scores` (r, S) float64,
    falling, equal scores in column order (as a stable sort of the whole row gives them). The k are selected by
    torch.topk, not a sort of the row, unless k is a large part of S or a tie straddles the k-th place (those
    rows are sorted whole)."""
    import torch

    r, s = scores.shape
    if 4 * k >= s:
        idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(scores, idx, axis=1)
    values, part = (t.numpy() for t in torch.topk(torch.from_numpy(scores), k, dim=1, sorted=False))
    idx = np.take_along_axis(part, np.lexsort((part, -values), axis=1), axis=1)
    ties = (scores >= values.min(axis=1, keepdims=True)).sum(axis=1) > k
    if ties.any():
        idx[ties] = np.argsort(-scores[ties], axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(scores, idx, axis=1)


def _speaker_means(matrix, owner, speakers, mean, keys, source):
    """(S, dim) float32: per speaker the mean of its rows of `matrix` centred (`mean`) and L2-normalised;
    owner[i] is the speaker index of row i. A model of norm < MIN_MODEL_NORM is an AvtkError."""
    x = centre_unit(matrix, mean, keys, source, "the gallery mean").astype(np.float64)
    sums = np.zeros((len(speakers), x.shape[1]))
    np.add.at(sums, owner, x)
    models = (sums / np.bincount(owner, minlength=len(speakers))[:, None]).astype(np.float32)
    norms = np.linalg.norm(models, axis=1)
    if (norms < MIN_MODEL_NORM).any():
        i = int(np.argmax(norms < MIN_MODEL_NORM))
        raise AvtkError(f"{source}: the enrollment embeddings of speaker {speakers[i]!r} cancel out (their mean "
                        f"has norm {norms[i]:.3g}): no direction to score against")
    return models


def _test_rows(test, source):
    """(keys, (n, dim) float32) of the test embeddings (see `Gallery.identify`), checked as every scored
    embedding is (`avtk.scoring.check_embeddings`)."""
    if isinstance(test, Mapping):
        keys = list(test)
        if not keys:
            raise AvtkError(f"{source}: no test embeddings")
        for key in keys:
            check_id(key, source, "utterance id")
        return keys, _whole_rows(embedding_matrix(test, keys, source, source))
    x = _float_rows(test, source)
    if x.ndim != 2 or not x.size:
        raise AvtkError(f"{source}: test embeddings must be (dim,) or (n, dim), got shape {np.shape(test)}")
    keys = [str(i) for i in range(len(x))]
    check_embeddings(x, keys, source)
    return keys, x


class _Scorer:
    """Scores of test rows against one gallery: cosines, AS-Norm normalised when a cohort is given."""

    def __init__(self, gallery, keys, matrix, cohort, top_n, source):
        if matrix.shape[1] != gallery.dim:
            raise AvtkError(f"{source}: embeddings have dimension {matrix.shape[1]} but the gallery's speaker "
                            f"models have {gallery.dim}")
        self.models = unit(gallery.models)
        self.test = centre_unit(matrix, gallery.mean, keys, source, "the gallery mean")
        self.cohort = cohort = None if cohort is None else _cohort_rows(cohort, gallery.dim)
        if cohort is not None:
            mu, sigma = cohort_stats(np.concatenate([self.models, self.test]), cohort, top_n)
            every = np.arange(len(mu))
            asnorm(np.zeros(len(mu)), mu, sigma, every, every, list(gallery.speakers) + list(keys), "cohort")
            s = len(self.models)  # (the call above raises asnorm's error for a std below MIN_SIGMA)
            self.mu_s, self.sigma_s, self.mu_t, self.sigma_t = mu[:s], sigma[:s], mu[s:], sigma[s:]

    def rows(self, idx):
        """Scores (len(idx), S) float64 of the test rows `idx` against every speaker: cosines, or with a cohort
        their AS-Norm scores, `avtk.scoring.asnorm`'s formula with the speaker model as the enrollment side."""
        raw = (self.test[idx] @ self.models.T).astype(np.float64)
        if self.cohort is None:
            return raw
        mu_t, sigma_t = self.mu_t[idx, None], self.sigma_t[idx, None]
        return ((raw - self.mu_s) / self.sigma_s + (raw - mu_t) / sigma_t) / 2


def _cohort_rows(cohort, dim):
    """The AS-Norm cohort as unit float32 rows (K, dim): a 2-D array of numbers of the gallery's dimension,
    finite and without zero rows (`avtk.scoring.check_embeddings`); rows that are not unit vectors (a cohort
    not from `avtk.scoring.make_cohort`) are L2-normalised, as cosines need. Otherwise an AvtkError."""
    c = _float_rows(cohort, "cohort")
    if c.ndim != 2 or not c.size:
        raise AvtkError(f"the cohort must be an array (members, dim), got shape {np.shape(cohort)}")
    if c.shape[1] != dim:
        raise AvtkError(f"the cohort has dimension {c.shape[1]} but the gallery has {dim}")
    check_embeddings(c, [f"cohort member {i + 1}" for i in range(len(c))], "cohort")
    if np.abs(np.linalg.norm(c, axis=1) - 1).max() > 1e-4:
        c = unit(c)
    return c


def _calibration(calibration, modalities, fused):
    """(model, column of each modality in the model's score rows) of a logreg calibration model (or its file);
    (None, None) without one."""
    if calibration is None:
        return None, None
    from avtk.calibration import FusionModel

    where = "calibration"
    if not isinstance(calibration, FusionModel):
        where = os.fspath(calibration)
        calibration = FusionModel.load(where)
    if calibration.method != "logreg":
        raise AvtkError(f"{where}: a {calibration.method} fusion model gives no log-likelihood ratios; calibrate "
                        "with avtk fuse --method logreg --model-out")
    if getattr(calibration, "quality", None):
        raise AvtkError(f"{where}: a calibration with quality measures (QMF) needs each trial's durations and "
                        "cohort statistics, which identify does not compute: give a logreg calibration without "
                        "quality measures")
    if isinstance(modalities, str):
        modalities = [m.strip() for m in modalities.split(",")]
    names = list(modalities) if modalities else list(calibration.modalities[:2 if fused else 1])
    if len(names) != (2 if fused else 1) or len(set(names)) != len(names):
        raise AvtkError(f"modalities {','.join(names)}: name {'the audio and the face' if fused else 'one'} "
                        f"modality of {where} ({', '.join(calibration.modalities)})")
    unknown = [n for n in names if n not in calibration.modalities]
    if unknown:
        raise AvtkError(f"{where}: no modality {unknown[0]!r} (it has {', '.join(calibration.modalities)})")
    log.info("%s calibrates the %s as its modalit%s %s", where, "audio and face scores" if fused else "scores",
             "ies" if fused else "y", ", ".join(names))
    return calibration, [calibration.modalities.index(n) for n in names]


def _apply(model, columns, scores):
    """model.apply to matrices of scores (one (r, S) per modality, NaN where missing) -> (r, S)."""
    shape = scores[0].shape
    rows = np.full((scores[0].size, len(model.modalities)), np.nan)
    for col, s in zip(columns, scores):
        rows[:, col] = s.ravel()
    fused, _ = model.apply(rows)
    return fused.reshape(shape)


# --------------------------------------------------------------------------------------------------
# results


@dataclass
class Identification:
    """The answer for every test utterance: `utts` (n), `speakers` (n lists of k speaker ids, best first),
    `scores` (n, k) float64 (cosines, AS-Norm scores, fused scores, or natural-log LLRs when `calibrated`),
    `decisions` (n: the top-1 speaker or `UNKNOWN`), `threshold` (the open-set threshold, None for closed
    set)."""

    utts: list
    speakers: list
    scores: np.ndarray
    decisions: list
    calibrated: bool = False
    threshold: float | None = None

    def write(self, path):
        """Write `utt decision spk_1 score_1 ... spk_k score_k` lines, atomically."""
        with atomic_open(path, "w", encoding="utf-8") as f:
            for utt, decision, spks, scores in zip(self.utts, self.decisions, self.speakers, self.scores.tolist()):
                pairs = " ".join(f"{s} {v:.6f}" for s, v in zip(spks, scores))
                f.write(f"{utt} {decision} {pairs}\n")


def read_identification(path):
    """An `Identification` from a file of `Identification.write` lines (calibrated and threshold unknown:
    False, None). A malformed line (an odd number of fields after the decision, a score that is not a finite
    number, scores not falling, a speaker listed twice, a decision other than the top-1 speaker or UNKNOWN,
    different numbers of candidates), a repeated utterance or an empty file is an AvtkError naming path:line."""
    utts, speakers, scores, decisions, first = [], [], [], [], {}
    for line in read_lines(path, min_fields=4):
        fields = line.value.split()
        if len(fields) % 2 != 1:
            raise AvtkError(f"{path}:{line.lineno}: malformed line (expected `utt decision spk score ...`)")
        if line.key in first:
            raise duplicate_key(path, line.lineno, line.key, first[line.key])
        first[line.key] = line.lineno
        try:
            values = [float(v) for v in fields[2::2]]
        except ValueError:
            raise AvtkError(f"{path}:{line.lineno}: a score is not a number: {line.value!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise AvtkError(f"{path}:{line.lineno}: a score is not a finite number: {line.value!r}")
        if any(b > a for a, b in zip(values, values[1:])):
            raise AvtkError(f"{path}:{line.lineno}: scores must fall from the first candidate to the last")
        if len(set(fields[1::2])) != len(fields[1::2]):
            twice = next(spk for i, spk in enumerate(fields[1::2]) if spk in fields[1::2][:i])
            raise AvtkError(f"{path}:{line.lineno}: speaker {twice!r} is a candidate twice")
        if fields[0] not in (fields[1], UNKNOWN):
            raise AvtkError(f"{path}:{line.lineno}: the decision {fields[0]!r} is neither the top-1 speaker nor "
                            f"{UNKNOWN}")
        if scores and len(values) != len(scores[0]):
            raise AvtkError(f"{path}:{line.lineno}: {len(values)} candidates, but line "
                            f"{first[utts[0]]} has {len(scores[0])}")
        utts.append(line.key)
        decisions.append(fields[0])
        speakers.append(fields[1::2])
        scores.append(values)
    if not utts:
        raise AvtkError(f"{path}: no identifications (empty file)")
    return Identification(utts, speakers, np.asarray(scores), decisions)
