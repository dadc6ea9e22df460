"""Verify one pair of recordings (and optionally faces) with trained models, without a recipe or data dirs.

The pair is verified by avtk.api.Verifier (the Python API; `verify_pair` is `avtk verify`'s use of it); this
module holds its parts: reading audio and faces, the cosine, calibration, decisions and stored thresholds.

Speaker score. Each recording is read whole (wav, flac, ... through libsndfile; m4a, mp4 and other media
containers through PyAV), its first channel taken (`channel=0`, the default, the rule of every avtk reader; another by index, or
`channel="mean"`: their average),
resampled to the model's rate (16 kHz) with `avtk.io.resample` when it differs, and embedded whole by the
speaker model (its own front end). The score is the cosine of the two embeddings: the plain cosine, with no
mean subtraction and no score normalisation, i.e. what `avtk score` gives without --mean-from/--cohort.

Face score. A face input is a directory of aligned 112x112 frames (used as they are, in sorted name order)
or a video (one frame every 0.4 s, MTCNN landmarks of the largest face, similarity warp to the template, as
`avtk extract-face-frames` does); frames without a face are left out. As `avtk.embed.embed_faces`, 5 evenly
spaced frames are embedded and their L2-normalised embeddings averaged; the score is the dot product of the
two means, i.e. the mean of the 5x5 frame cosine matrix. (`avtk score` L2-normalises the mean embeddings
first, so its face scores are these divided by the two means' norms.)

Decisions. A model file may hold a `verify` section, {threshold, source, score}, written by
`set_threshold` (`avtk verify --set-threshold T` or `--set-threshold-eer DEV_SCORES`). A calibration model
(`avtk fuse --method logreg --model-out`) maps scores to natural-log likelihood ratios; its modalities are
taken in order as speaker then face unless named. The decision is made by, in this order:

1. the fused LLR, when there is a calibration with both modalities and both were scored: same if
   fused_llr > ln((1 - prior) / prior) (0 at the default prior 0.5);
2. the speaker model's stored threshold: same if speaker_score >= threshold;
3. the speaker LLR, when there is a calibration: same if llr > ln((1 - prior) / prior);
4. nothing: the score is printed with a note on how to store a threshold, and no decision.

Numbers. Audio is read by avtk.io.audio (NaN, infinite or absurd samples and truncated files are errors);
an embedding that is not finite or all zeros is an error naming the input (avtk.scoring.check_embeddings);
a score, LLR or threshold that is not a finite number gives no decision but an error (`check_number`).

A face model's stored threshold gives a separate `face_decision`. Thresholds and calibrations must come from
development trials scored as above (plain cosine; for faces the dot product of mean embeddings), or the
decision is off by the difference.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch

from avtk.embed import read_model_file
from avtk.errors import AvtkError
from avtk.io.atomic import torch_save

log = logging.getLogger(__name__)

COSINE_BOUND = 1.0 + 1e-5  # a float32 cosine lies in [-1, 1] up to rounding
NO_THRESHOLD = "no threshold stored (set one with --set-threshold, e.g. the EER threshold on your dev trials)"
FACE_FRAMES = 5
FACE_INTERVAL = 0.4


# ---------------------------------------------------------------------------------------------- model files


def is_face(net):
    return getattr(net, "modality", None) == "face"


def stored_threshold(blob):
    """The `verify` section of a model file's dict ({threshold, source, score}), or None."""
    section = blob.get("verify") if isinstance(blob, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get("threshold"), (int, float)):
        return None
    return section


def set_threshold(model_path, threshold, source):
    """Store a decision threshold in a model file (its `verify` section), atomically; returns the section."""
    from avtk.models import modality

    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise AvtkError(f"threshold {threshold} is not a finite number")
    if abs(threshold) > COSINE_BOUND:
        raise AvtkError(f"threshold {threshold:g} ({source}): verify compares it with a cosine, which lies in "
                        "[-1, 1], so every pair would get the same decision; take it from plain cosine scores")
    blob = read_model_file(model_path)
    face = modality(blob["config"]["model"]["encoder"]) == "face"
    blob["verify"] = {
        "threshold": threshold,
        "source": str(source),
        "score": "dot product of mean L2-normalised frame embeddings" if face else "cosine of embeddings",
    }
    # the model file is read and rewritten on purpose: --set-threshold stores the threshold in it
    torch_save(blob, model_path, replaces_input=True)
    return blob["verify"]


def eer_threshold(scores_path):
    """(threshold, source text) at the equal error rate of a labelled scores file."""
    from avtk.fusion import read_scores
    from avtk.metrics import eer

    scores = read_scores(scores_path)
    if scores.labels is None:
        raise AvtkError(f"{scores_path}: needs target|nontarget labels to find the EER threshold")
    beyond = np.flatnonzero(np.abs(scores.scores) > COSINE_BOUND)
    if len(beyond):
        i = int(beyond[0])
        where = f"{scores_path}:{scores.lineno[i]}" if scores.lineno else f"{scores_path}: trial {i + 1}"
        raise AvtkError(f"{where}: score {scores.scores[i]:g} is no cosine ({len(beyond)} scores lie outside "
                        "[-1, 1]): these are AS-Norm or calibrated scores, but verify thresholds plain cosines "
                        "(avtk score without --cohort, --mean-from, --subtract-mean)")
    try:
        rate, threshold = eer(scores.scores, scores.labels)
    except ValueError as err:
        raise AvtkError(f"{scores_path}: {err}") from None
    source = f"EER threshold of {os.path.abspath(scores_path)} (EER {100 * rate:.2f} %, {len(scores)} trials)"
    return threshold, source


# ---------------------------------------------------------------------------------------------- audio


def read_audio(path, sample_rate=16000, channel=0):
    """(float32 mono samples at sample_rate, description) of an audio or media file (avtk.io.audio.read_file:
    its checks and errors), its channels mixed and its rate converted by `mono_at_rate`.

    channel: an int picks one (0, the default, is the first), "mean" averages them.
    """
    from avtk.io.audio import read_file

    path = os.fspath(path)
    data, rate = read_file(path)
    wave, what = mono_at_rate(data, rate, sample_rate, channel, f"audio file {path}")
    return wave, f"{path}: {what}"


def mono_at_rate(data, rate, sample_rate=16000, channel=0, name="audio"):
    """(float32 (samples,) at sample_rate, description) of float32 audio `data` (samples, channels) at `rate`
    Hz: one channel picked (an int, 0 = the first, the default) or the channels averaged ("mean"), then resampled with
    avtk.io.resample when the rates differ (a windowed-sinc polyphase filter). Errors (AvtkError) name `name`:
    no samples, a channel that does not exist, rates that cannot be converted."""
    from avtk.io.resample import resample

    if data.shape[0] == 0:
        raise AvtkError(f"{name} has no samples")
    channels = data.shape[1]
    if channels == 0:
        raise AvtkError(f"{name} has no channels")
    if channel != "mean" and (isinstance(channel, bool) or not isinstance(channel, (int, np.integer))):
        raise AvtkError(f"channel {channel!r}: give 'mean' or a channel index (0, 1, ...)")
    if channel == "mean":
        wave = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
        how = "channels averaged" if channels > 1 else "mono"
    else:
        if not 0 <= int(channel) < channels:
            raise AvtkError(f"{name} has {channels} channel(s); channel {channel} does not exist")
        wave, how = data[:, int(channel)], "mono" if channels == 1 else f"channel {channel}"
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    what = f"{len(wave) / rate:.2f} s at {rate} Hz, {channels} channel(s), {how}"
    if rate != sample_rate:
        try:
            wave = resample(torch.from_numpy(wave), int(rate), int(sample_rate)).numpy()
        except ValueError as err:
            raise AvtkError(f"cannot resample {name} from {rate} Hz: {err}") from None
        what += f", resampled to {sample_rate} Hz"
    return wave, what


def speaker_embedding(net, wave, path, device="cpu"):
    """The whole-recording embedding, float32 (dim,), of `wave` (float32 samples at the network's rate) by a
    SpeakerNet already prepared for inference (avtk.embed.prepare_for_inference): avtk.embed.embed on one
    item, extraction's own code. A recording too short for one feature frame, or an embedding that is not
    finite or all zeros, is an AvtkError naming `path` (a file, or the label of an array)."""
    from avtk.embed import embed

    skipped = []
    out = dict(embed(net, [(path, np.asarray(wave, np.float32))], "wav", device, skipped=skipped, fused=False))
    if skipped:
        raise AvtkError(f"audio file {path} is too short: {len(wave)} samples give no feature frames")
    return out[path]


def cosine(a, b, names=("a", "b")):
    """The cosine of two embeddings; one that is not finite or all zeros is an AvtkError naming it (`names`),
    by the rule `avtk score` applies (avtk.scoring.check_embeddings)."""
    from avtk.scoring import check_embeddings

    check_embeddings(np.stack([a, b]), list(names), "verify")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)  # float32 squares of 1e20 overflow
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------------------------------- faces


class FaceReader:
    """Aligned face images of a face input: a directory of aligned frames, or a video (MTCNN + alignment)."""

    def __init__(self, size=112, n_frames=FACE_FRAMES, interval=FACE_INTERVAL, device="cpu"):
        self.size, self.n_frames, self.interval, self.device = size, n_frames, interval, device
        self._detector = None

    def detector(self):
        if self._detector is None:
            from avtk.face.extract import build_detector

            self._detector = build_detector("mtcnn", self.device)
        return self._detector

    def images(self, label, source, n_frames=None, interval=None):
        """(uint8 (n_frames, size, size, 3) RGB, description): evenly spaced aligned frames (n_frames and
        interval: this call's, instead of the reader's)."""
        from avtk.face.frames import evenly_spaced, frame_paths, read_frame

        n_frames = self.n_frames if n_frames is None else n_frames
        interval = self.interval if interval is None else interval
        if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
            raise AvtkError(f"{label}: n_frames {n_frames!r}: give the number of frames to embed, >= 1")
        if isinstance(interval, bool) or not isinstance(interval, (int, float, np.number)) \
                or not math.isfinite(interval) or interval <= 0:
            raise AvtkError(f"{label}: interval {interval!r}: give the seconds between video frames, > 0")
        source = os.fspath(source)
        if not os.path.exists(source):
            raise AvtkError(f"{label}: face input {source} does not exist")
        if os.path.isdir(source):
            paths = frame_paths(label, source)
            if not paths:
                raise AvtkError(f"{label}: {source} holds no frames (.jpg, .jpeg, .png)")
            chosen = evenly_spaced(paths, n_frames)
            images = [read_frame(label, p, self.size) for p in chosen]
            return np.stack(images), f"{source}: {len(paths)} aligned frames, {len(set(chosen))} used"
        from avtk.face.extract import align_frame, source_frames

        detector = self.detector()
        faces, frames = [], 0
        for name, image in source_frames(label, source, interval):
            frames += 1
            aligned, _ = align_frame(detector, name, image, self.size)
            if aligned is not None:
                faces.append(aligned)
        if not faces:
            raise AvtkError(f"{label}: no face found in {source} ({frames} frames, one every {interval:g} s)")
        chosen = evenly_spaced(list(range(len(faces))), n_frames)
        what = (f"{source}: {frames} frames (one every {interval:g} s), {len(faces)} with a face, "
                f"{len(set(chosen))} used")
        return np.stack([faces[i] for i in chosen]), what


def face_embedding(net, images, device="cpu", label="face"):
    """The mean of the L2-normalised embeddings of a stack of RGB uint8 images (n, H, W, 3), float32 (dim,):
    avtk.embed.face_means, the computation extract-embeddings runs."""
    from avtk.embed import face_means

    return face_means(net, [(label, images)], device)[0][1]


# ---------------------------------------------------------------------------------------------- calibration


def load_calibration(path, names=None):
    """(FusionModel, speaker modality name, face modality name or None) of a logreg model file (or of a
    FusionModel already loaded, named "calibration" in errors).

    names: the model's modality names for the speaker and the face score ("audio,face"); default: the model's
    modalities in order.
    """
    from avtk.calibration import FusionModel

    if isinstance(path, FusionModel):
        model, path = path, "calibration"
    else:
        model = FusionModel.load(path)
    if model.method != "logreg":
        raise AvtkError(f"{path}: a {model.method} fusion model gives no log-likelihood ratios; calibrate with "
                        "avtk fuse --method logreg --model-out")
    if getattr(model, "quality", None):
        measures = ", ".join(sorted({str(q.get("measure")) for q in model.quality}))
        raise AvtkError(f"{path}: a calibration with quality measures ({measures}), which verify does not "
                        "compute for a pair; calibrate without them (avtk fuse --method logreg --model-out)")
    chosen = [n.strip() for n in names.split(",")] if names else list(model.modalities[:2])
    if not 1 <= len(chosen) <= 2 or len(set(chosen)) != len(chosen):
        raise AvtkError(f"--modalities {names!r}: give the speaker's and optionally the face's modality name")
    unknown = [n for n in chosen if n not in model.modalities]
    if unknown:
        raise AvtkError(f"{path}: no modality {unknown[0]!r} (it has {', '.join(model.modalities)})")
    log.info("%s calibrates the speaker score as its modality %s%s", path, chosen[0],
             f" and the face score as {chosen[1]}" if len(chosen) > 1 else "")
    return model, chosen[0], chosen[1] if len(chosen) > 1 else None


def calibrated_llr(model, scores):
    """The LLR of one trial from {modality: score}; the others are missing (their subset calibration applies)."""
    row = np.full((1, len(model.modalities)), np.nan)  # NaN means missing to FusionModel.apply
    for name, value in scores.items():
        row[0, model.modalities.index(name)] = check_number(f"{name} score", value)
    fused, _ = model.apply(row)
    return float(fused[0])


# ---------------------------------------------------------------------------------------------- the pair


def decide(speaker_score, threshold=None, llr=None, fused_llr=None, prior=0.5):
    """[(key, value)] lines of the decision (see the module doc for the order of the rules). A score, LLR or
    threshold that is given but not a finite number is an AvtkError: no decision is made from it."""
    for name, value in (("speaker score", speaker_score), ("llr", llr), ("fused llr", fused_llr),
                        ("stored threshold", None if threshold is None else threshold["threshold"])):
        check_number(name, value)
    llr_threshold = math.log((1.0 - prior) / prior)
    if fused_llr is not None:
        return [("decided_by", "fused_llr"), ("llr_threshold", num_text(llr_threshold)),
                ("decision", _same(fused_llr > llr_threshold))]
    if threshold is not None:
        lines = [("threshold", num_text(threshold["threshold"]))]
        if threshold.get("source"):
            lines.append(("threshold_source", threshold["source"]))
        return lines + [("decided_by", "threshold"), ("decision", _same(speaker_score >= threshold["threshold"]))]
    if llr is not None:
        return [("decided_by", "llr"), ("llr_threshold", num_text(llr_threshold)),
                ("decision", _same(llr > llr_threshold))]
    return [("note", NO_THRESHOLD)]


def check_number(name, value):
    """`value` unless it is a number that is not finite (None passes): AvtkError `the <name> is <value>, not a
    finite number: no decision is made`."""
    if value is not None and not math.isfinite(float(value)):
        raise AvtkError(f"the {name} is {float(value)}, not a finite number: no decision is made")
    return value


def num_text(x):
    """A score, LLR or threshold as `avtk verify` prints it: 4 decimals."""
    return f"{x:.4f}"


def _same(flag):
    return "same" if flag else "different"


def verify_pair(model_path, audio_a, audio_b, *, face_model=None, face_a=None, face_b=None, calibration=None,
                modalities=None, prior=0.5, channel=0, face_frames=FACE_FRAMES, interval=FACE_INTERVAL,
                device="cpu"):
    """`avtk verify` of a pair: the options checked, the model files loaded (avtk.api.load_model) and the pair
    verified by avtk.api.Verifier; returns its [(key, value)] lines: speaker_score, face_score, llr, face_llr,
    fused_llr, the decision lines, and face_threshold / face_decision when the face model stores one."""
    from avtk.api import FaceModel, Verifier, load_model

    if not 0.0 < prior < 1.0:
        raise AvtkError(f"--prior {prior}: must be in (0, 1)")
    if (face_a is None) != (face_b is None):
        raise AvtkError("give both --face-a and --face-b, or neither")
    if face_a is not None and not face_model:
        raise AvtkError("--face-a/--face-b need a face model (--face-model)")
    if face_model and face_a is None:
        raise AvtkError(f"--face-model {face_model} given without faces to compare (--face-a, --face-b)")
    for path in (audio_a, audio_b):  # fail before loading anything
        if not os.path.exists(path):
            raise AvtkError(f"audio file {path} does not exist")
    for label, path in (("--face-a", face_a), ("--face-b", face_b)):
        if path is not None and not os.path.exists(path):
            raise AvtkError(f"{label}: face input {path} does not exist")
    speaker = load_model(model_path, device)
    if isinstance(speaker, FaceModel):
        raise AvtkError(f"{model_path} is a face model: give a speaker model as --model (and this one as "
                        "--face-model)")
    face = None
    if face_a is not None:
        face = load_model(face_model, device)
        if not isinstance(face, FaceModel):
            raise AvtkError(f"{face_model} is a speaker model, not a face model (--face-model)")
    verifier = Verifier(speaker, face, calibration or None, modalities=modalities, prior=prior, channel=channel,
                        face_frames=face_frames, interval=interval)
    result = verifier.verify(os.fspath(audio_a), os.fspath(audio_b), face_a, face_b,
                             face_labels=("--face-a", "--face-b"))
    return list(result.lines)
