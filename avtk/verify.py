"""Verify one pair of recordings (and optionally faces) with trained models, without a recipe or data dirs.

Speaker score. Each recording is read whole (wav, flac, ... through libsndfile; m4a, mp4 and other media
containers through PyAV), its channels averaged (`channel="mean"`, the default; or one channel by index),
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

from avtk.embed import check_outputs, load_network, prepare_for_inference, read_model_file
from avtk.errors import AvtkError
from avtk.io.atomic import torch_save

log = logging.getLogger(__name__)

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
    blob = read_model_file(model_path)
    face = modality(blob["config"]["model"]["encoder"]) == "face"
    blob["verify"] = {
        "threshold": threshold,
        "source": str(source),
        "score": "dot product of mean L2-normalised frame embeddings" if face else "cosine of embeddings",
    }
    torch_save(blob, model_path)
    return blob["verify"]


def eer_threshold(scores_path):
    """(threshold, source text) at the equal error rate of a labelled scores file."""
    from avtk.fusion import read_scores
    from avtk.metrics import eer

    scores = read_scores(scores_path)
    if scores.labels is None:
        raise AvtkError(f"{scores_path}: needs target|nontarget labels to find the EER threshold")
    try:
        rate, threshold = eer(scores.scores, scores.labels)
    except ValueError as err:
        raise AvtkError(f"{scores_path}: {err}") from None
    source = f"EER threshold of {os.path.abspath(scores_path)} (EER {100 * rate:.2f} %, {len(scores)} trials)"
    return threshold, source


# ---------------------------------------------------------------------------------------------- audio


def read_audio(path, sample_rate=16000, channel="mean"):
    """(float32 mono samples at sample_rate, description) of an audio or media file.

    channel: "mean" averages the channels, an int picks one (0 is the first).
    """
    from avtk.io.audio import read_file
    from avtk.io.resample import resample

    path = os.fspath(path)
    data, rate = read_file(path)
    if data.shape[0] == 0:
        raise AvtkError(f"audio file {path} has no samples")
    channels = data.shape[1]
    if channel == "mean":
        wave = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
        how = "channels averaged" if channels > 1 else "mono"
    else:
        if not 0 <= int(channel) < channels:
            raise AvtkError(f"audio file {path} has {channels} channel(s); channel {channel} does not exist")
        wave, how = data[:, int(channel)], f"channel {channel}"
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    what = f"{path}: {len(wave) / rate:.2f} s at {rate} Hz, {channels} channel(s), {how}"
    if rate != sample_rate:
        try:
            wave = resample(torch.from_numpy(wave), int(rate), int(sample_rate)).numpy()
        except ValueError as err:
            raise AvtkError(f"cannot resample audio file {path} from {rate} Hz: {err}") from None
        what += f", resampled to {sample_rate} Hz"
    return wave, what


@torch.inference_mode()
def speaker_embedding(net, wave, path, device="cpu"):
    """The whole-recording embedding (numpy float32) of a SpeakerNet."""
    if net.frontend.num_frames(len(wave)) < 1:
        raise AvtkError(f"audio file {path} is too short: {len(wave)} samples give no feature frames")
    x = torch.from_numpy(np.asarray(wave, np.float32))[None].to(device)
    return check_outputs(net(x).float().cpu().numpy(), [path])[0]


def cosine(a, b, names=("a", "b")):
    """The cosine of two embeddings; one that is not finite or all zeros is an AvtkError naming it (`names`),
    by the rule `avtk score` applies (avtk.scoring.check_embeddings)."""
    from avtk.scoring import check_embeddings

    check_embeddings(np.stack([a, b]), list(names), "verify")
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

    def images(self, label, source):
        """(uint8 (n_frames, size, size, 3) RGB, description): evenly spaced aligned frames."""
        from avtk.face.frames import evenly_spaced, frame_paths, read_frame

        source = os.fspath(source)
        if not os.path.exists(source):
            raise AvtkError(f"{label}: face input {source} does not exist")
        if os.path.isdir(source):
            paths = frame_paths(label, source)
            if not paths:
                raise AvtkError(f"{label}: {source} holds no frames (.jpg, .jpeg, .png)")
            chosen = evenly_spaced(paths, self.n_frames)
            images = [read_frame(label, p, self.size) for p in chosen]
            return np.stack(images), f"{source}: {len(paths)} aligned frames, {len(set(chosen))} used"
        from avtk.face.extract import align_frame, source_frames

        detector = self.detector()
        faces, frames = [], 0
        for name, image in source_frames(label, source, self.interval):
            frames += 1
            aligned, _ = align_frame(detector, name, image, self.size)
            if aligned is not None:
                faces.append(aligned)
        if not faces:
            raise AvtkError(f"{label}: no face found in {source} ({frames} frames, one every {self.interval:g} s)")
        chosen = evenly_spaced(list(range(len(faces))), self.n_frames)
        what = (f"{source}: {frames} frames (one every {self.interval:g} s), {len(faces)} with a face, "
                f"{len(set(chosen))} used")
        return np.stack([faces[i] for i in chosen]), what


@torch.inference_mode()
def face_embedding(net, images, device="cpu", label="face"):
    """The mean of the L2-normalised embeddings of a stack of RGB uint8 images (as avtk.embed.embed_faces)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    raw = net(x).float()
    check_outputs(raw.cpu().numpy(), [label] * len(raw))
    return torch.nn.functional.normalize(raw, dim=1).mean(0).cpu().numpy()


# ---------------------------------------------------------------------------------------------- calibration


def load_calibration(path, names=None):
    """(FusionModel, speaker modality name, face modality name or None) of a logreg model file.

    names: the model's modality names for the speaker and the face score ("audio,face"); default: the model's
    modalities in order.
    """
    from avtk.calibration import FusionModel

    model = FusionModel.load(path)
    if model.method != "logreg":
        raise AvtkError(f"{path}: a {model.method} fusion model gives no log-likelihood ratios; calibrate with "
                        "avtk fuse --method logreg --model-out")
    chosen = [n.strip() for n in names.split(",")] if names else list(model.modalities[:2])
    if not 1 <= len(chosen) <= 2 or len(set(chosen)) != len(chosen):
        raise AvtkError(f"--modalities {names!r}: give the speaker's and optionally the face's modality name")
    unknown = [n for n in chosen if n not in model.modalities]
    if unknown:
        raise AvtkError(f"{path}: no modality {unknown[0]!r} (it has {', '.join(model.modalities)})")
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
        return [("decided_by", "fused_llr"), ("llr_threshold", _num(llr_threshold)),
                ("decision", _same(fused_llr > llr_threshold))]
    if threshold is not None:
        lines = [("threshold", _num(threshold["threshold"]))]
        if threshold.get("source"):
            lines.append(("threshold_source", threshold["source"]))
        return lines + [("decided_by", "threshold"), ("decision", _same(speaker_score >= threshold["threshold"]))]
    if llr is not None:
        return [("decided_by", "llr"), ("llr_threshold", _num(llr_threshold)), ("decision", _same(llr > llr_threshold))]
    return [("note", NO_THRESHOLD)]


def check_number(name, value):
    """`value` unless it is a number that is not finite (None passes): AvtkError `the <name> is <value>, not a
    finite number: no decision is made`."""
    if value is not None and not math.isfinite(float(value)):
        raise AvtkError(f"the {name} is {float(value)}, not a finite number: no decision is made")
    return value


def _num(x):
    return f"{x:.4f}"


def _same(flag):
    return "same" if flag else "different"


def verify_pair(model_path, audio_a, audio_b, *, face_model=None, face_a=None, face_b=None, calibration=None,
                modalities=None, prior=0.5, channel="mean", face_frames=FACE_FRAMES, interval=FACE_INTERVAL,
                device="cpu"):
    """Score a pair and decide; returns [(key, value)] lines: speaker_score, face_score, llr, face_llr,
    fused_llr, the decision lines, and face_threshold / face_decision when the face model stores one."""
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
    cal = load_calibration(calibration, modalities) if calibration else None
    net, _, blob = load_network(model_path, device)
    if is_face(net):
        raise AvtkError(f"{model_path} is a face model: give a speaker model as --model (and this one as "
                        "--face-model)")
    net = prepare_for_inference(net)  # fused ECAPA-TDNN, as avtk.embed.embed
    rate = int(net.frontend.sample_rate)
    embeddings = []
    for path in (audio_a, audio_b):
        wave, what = read_audio(path, rate, channel)
        log.info("%s", what)
        embeddings.append(speaker_embedding(net, wave, path, device))
    speaker_score = cosine(*embeddings, names=(audio_a, audio_b))
    lines = [("speaker_score", _num(speaker_score))]
    face_score, face_blob = None, None
    if face_a is not None:
        fnet, _, face_blob = load_network(face_model, device)
        fnet = prepare_for_inference(fnet)  # fused iresnet, as avtk.embed.embed_faces
        if not is_face(fnet):
            raise AvtkError(f"{face_model} is a speaker model, not a face model (--face-model)")
        reader = FaceReader(int(fnet.input_size), face_frames, interval, device)
        means = []
        for label, source in (("--face-a", face_a), ("--face-b", face_b)):
            images, what = reader.images(label, source)
            log.info("%s", what)
            means.append(face_embedding(fnet, images, device, f"{label} {source}"))
        face_score = float(np.dot(means[0], means[1]))
        lines.append(("face_score", _num(face_score)))
    llr = fused_llr = None
    if cal is not None:
        model, speaker_name, face_name = cal
        llr = calibrated_llr(model, {speaker_name: speaker_score})
        lines.append(("llr", _num(llr)))
        if face_score is not None and face_name is None:
            log.warning("%s calibrates %s only: no fused LLR", calibration, speaker_name)
        elif face_score is not None:
            lines.append(("face_llr", _num(calibrated_llr(model, {face_name: face_score}))))
            fused_llr = calibrated_llr(model, {speaker_name: speaker_score, face_name: face_score})
            lines.append(("fused_llr", _num(fused_llr)))
    lines += decide(speaker_score, stored_threshold(blob), llr, fused_llr, prior)
    face_threshold = stored_threshold(face_blob) if face_blob is not None else None
    if face_threshold is not None:
        check_number("face score", face_score)
        check_number("stored face threshold", face_threshold["threshold"])
        lines += [("face_threshold", _num(face_threshold["threshold"])),
                  ("face_decision", _same(face_score >= face_threshold["threshold"]))]
    return lines
