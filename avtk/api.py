"""The Python API: trained models as objects that embed, score and verify.

    import avtk

    speaker = avtk.load_model("exp/ecapa/avg_model.pt")        # a SpeakerModel
    e = speaker.embed("a.wav")                                  # float32 (dim,)
    E = speaker.embed_batch(["a.wav", "b.m4a", wave_44k], sample_rate=44100)   # (3, dim)
    speaker.score("a.wav", "b.wav")                             # cosine, float
    face = avtk.load_model("exp/iresnet/avg_model.pt")          # a FaceModel
    f = face.embed_faces("frames/a/")                           # float32 (dim,)
    result = avtk.Verifier(speaker, face, "exp/fusion/logreg.yaml").verify("a.wav", "b.wav", "frames/a", "frames/b")
    result.decision, result.fused_llr

`load_model` reads any avtk model file (what `avtk train` writes: avg_model.pt or a checkpoint; what `avtk
import-model` writes; one `avtk verify --set-threshold` stored a threshold in) and, through
avtk.models.importer, a foreign checkpoint whose layout is unambiguous (the seed's A-Vox2.model,
ECAPA-TDNN's pretrain.model, V-Vox2.model) or whose `format` is given (V-Glint, an insightface backbone).

One code path with the commands: `avtk extract-embeddings` embeds through SpeakerModel.embed_items and
FaceModel.embed_items, `avtk verify` through Verifier.verify; single embeddings run the same batched
extraction code (avtk.embed.embed, avtk.embed.face_means) on one item, so they equal the commands' output
within float32 rounding (tests/test_api.py: 1e-5), and a Verifier's scores and decisions are `avtk verify`'s
exactly. Audio is read by avtk.io.audio (wav, flac, ... through libsndfile; m4a, mp4, ... through PyAV),
resampled with avtk.io.resample, face frames by avtk.face.frames.read_frame. Every bad input (a missing or
corrupt file, NaN or infinite samples, a wrong shape or dtype, a recording too short for one feature frame,
a non-finite or all-zero embedding) is an avtk.errors.AvtkError with a one-line message naming it.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from avtk import verify as _verify  # speaker_embedding is looked up there at each call (tests replace it)
from avtk.errors import AvtkError
from avtk.verify import (FACE_FRAMES, FACE_INTERVAL, FaceReader, calibrated_llr, check_number, cosine, decide,
                         face_embedding, is_face, load_calibration, mono_at_rate, num_text, read_audio,
                         stored_threshold)

log = logging.getLogger(__name__)

__all__ = ["load_model", "SpeakerModel", "FaceModel", "Verifier", "Verification"]


# ---------------------------------------------------------------------------------------------- loading


def load_model(path, device="cpu", format=None):
    """A SpeakerModel or a FaceModel (by the modality of the file's encoder) of a model file, on `device`
    ("cpu", "cuda", "cuda:N").

    path: an avtk model file (avtk train's avg_model.pt or a checkpoint, avtk import-model's output), or a
    foreign checkpoint that avtk.models.importer reads: with format None only a layout that names its
    format (the seed's A-Vox2.model and V-Vox2.model, ECAPA-TDNN's pretrain.model); an iresnet backbone
    without an AAM matrix is V-Glint (fed BGR, as the seed did) or an insightface backbone (RGB), so it needs
    format="v-glint" or "insightface". format: one of avtk.models.importer.FORMATS, to import the file as.

    Errors (AvtkError naming the file): a missing or foreign file, a config that builds no network, weights
    that do not fit it or hold NaN or infinite values, an import mismatch.
    """
    from avtk.embed import load_network, network_of

    path = os.fspath(path)
    check_device(device)
    if format is None:
        try:
            net, config, blob = load_network(path, device)
        except AvtkError as err:
            imported = _import_unambiguous(path, err)
            net, config, blob = network_of(imported.config, imported.weights, path, device), imported.config, {}
    else:
        from avtk.models.importer import import_checkpoint

        imported = import_checkpoint(path, format)
        net, config, blob = network_of(imported.config, imported.weights, path, device), imported.config, {}
    if getattr(net, "modality", None) == "audio-visual":
        raise AvtkError(f"{path}: a joint audio-visual network (gated_fusion) embeds speaker and face embeddings, "
                        "not audio or faces: use avtk extract-joint-embeddings")
    cls = FaceModel if is_face(net) else SpeakerModel
    return cls(net, config, path, device, stored_threshold(blob))


def check_device(device):
    """AvtkError unless torch can run on `device` here: "cpu", or "cuda"/"cuda:N" with a GPU N that torch sees
    (a torch built without CUDA, or a host without GPUs, sees none)."""
    text = str(device)
    if text == "cpu":
        return
    if text != "cuda" and not (text.startswith("cuda:") and text[5:].isascii() and text[5:].isdigit()):
        raise AvtkError(f"device {device!r}: give cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise AvtkError(f"device {text}: torch sees no CUDA GPU here (torch {torch.__version__}, CUDA "
                        f"{torch.version.cuda or 'not built in'}): use cpu")
    index = int(text[5:]) if ":" in text else 0
    if index >= count:
        raise AvtkError(f"device {text}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}")


class WrongModelKind(AvtkError, AttributeError):
    """A face model's method called on a speaker model, or the reverse: an AvtkError (one line for users) that
    is also an AttributeError, so `hasattr` still tells the kinds apart."""


_SPEAKER_ONLY = ("embed", "embed_batch", "embed_features", "waveform", "sample_rate", "takes_features")
_FACE_ONLY = ("embed_faces", "images", "input_size")


class _Model:
    """What speaker and face models share: the network, its config, the file it came from, the device, the
    stored `verify` threshold, and the fused inference copy (avtk.embed.prepare_for_inference) that runs."""

    KIND, OTHER, OTHERS_NAMES = "", "", ()  # set by each kind: its name, the other kind's, that kind's names

    def __init__(self, net, config, path="<memory>", device="cpu", threshold=None):
        from avtk.embed import prepare_for_inference

        self.net, self.config, self.path, self.device, self.threshold = net, config, path, device, threshold
        self._fast = prepare_for_inference(net)  # the fused inference copy extraction runs

    def __repr__(self):
        return f"{type(self).__name__}({self.path!r}, {self.config['model']['encoder']}, dim {self.embed_dim})"

    def __getattr__(self, name):  # only for names the class lacks: the other kind's methods say so
        if name in self.OTHERS_NAMES:
            path = self.__dict__.get("path", "<memory>")
            raise WrongModelKind(f"{path} is a {self.KIND} model: {name} belongs to a {self.OTHER} model (load "
                                 "one with avtk.load_model)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def embed_dim(self):
        return int(self.net.encoder.embed_dim)


def _import_unambiguous(path, err):
    """The importer's Imported of a foreign checkpoint whose format its keys name, or raise `err` (the avtk
    model file reader's error) when it is no such checkpoint."""
    from avtk.models.importer import guess_format, import_checkpoint, read_state_dict

    if "not an avtk model file" not in str(err):  # missing, or an avtk file with bad weights: err says it
        raise err
    try:
        state = read_state_dict(path)
    except AvtkError:
        raise err from None
    fmt = guess_format(state)
    if fmt is None:
        raise err
    if fmt in ("v-glint", "insightface"):
        raise AvtkError(f"{path}: an insightface iresnet backbone: give format='v-glint' (BGR, as the seed fed "
                        "V-Glint) or format='insightface' (RGB) to load it, or import it with avtk import-model")
    log.info("%s: a foreign checkpoint, imported as format %s (avtk.models.importer)", path, fmt)
    return import_checkpoint(path, fmt)


def _label(x, default):
    """A path's text, or `default` for an in-memory input (the name errors give it)."""
    return os.fspath(x) if isinstance(x, (str, os.PathLike)) else default


def _as_numpy(x, label, what):
    """A numpy array of a numpy array or a torch tensor (detached, on the CPU); anything else is an AvtkError."""
    if torch.is_tensor(x):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every value
            x = x.float()
        return x.numpy()
    if isinstance(x, np.ndarray):
        return x
    raise AvtkError(f"{label}: {what} must be a path, a numpy array or a torch tensor, not a {type(x).__name__}")


# ---------------------------------------------------------------------------------------------- speakers


class SpeakerModel(_Model):
    """A speaker network for inference (what `load_model` gives for a speech encoder).

    Attributes: net (the SpeakerNet, eval mode), config (the model file's resolved config), path, device,
    sample_rate (Hz, of its front end), embed_dim, takes_features (its config's data.input is feats), threshold
    (the model file's stored `verify` section {threshold, source, score}, or None).

    Inputs. Audio is a path (any file avtk.io.audio reads: wav, flac, ..., m4a, mp4, ...; the file's own rate
    is used), or a numpy array or torch tensor of samples at `sample_rate` Hz: 1-D (samples,) or
    (channels, samples); float (any precision, full scale +-1) or int16 PCM (divided by 32768). Of several
    channels the first is taken (channel=0, the default: avtk.io.audio's one rule, as Kaldi and every avtk
    command read a multi-channel file), another by index, or their average (channel="mean"); audio at another
    rate than the model's is resampled (avtk.io.resample). Each recording is embedded whole.
    """

    KIND, OTHER, OTHERS_NAMES = "speaker", "face", _FACE_ONLY

    @property
    def sample_rate(self):
        return int(self.net.frontend.sample_rate)

    @property
    def takes_features(self):
        """Whether the model was trained on feature tables (config data.input: feats), so that a feature matrix
        of `avtk compute-fbank` (with the training options) is its input; a model trained on audio (data.input:
        wav, e.g. an imported one with the seed's front end) takes audio only."""
        return self.config.get("data", {}).get("input") == "feats"

    def waveform(self, audio, sample_rate=16000, channel=0, label="audio"):
        """(float32 (samples,) mono at the model's rate, description) of one recording (class doc: inputs).

        Errors (AvtkError naming the file, or `label` for an array): a missing, corrupt or truncated file;
        NaN, infinite or absurd samples (avtk.io.audio.check_samples); a wrong shape or dtype; no samples;
        a channel that does not exist; a sample rate that is not a positive integer.
        """
        if isinstance(audio, (str, os.PathLike)):
            wave, what = read_audio(audio, self.sample_rate, channel)
            return self._long_enough(wave, f"audio file {os.fspath(audio)}"), what
        from avtk.io.audio import check_samples

        data = _as_numpy(audio, label, "audio")
        rate = _rate(sample_rate, label)
        name = f"audio array {label}"
        if data.ndim not in (1, 2):
            raise AvtkError(f"{name} has shape {data.shape}: give (samples,) or (channels, samples)")
        if data.ndim == 2 and data.shape[0] > data.shape[1]:
            raise AvtkError(f"{name} has shape {data.shape}: give (channels, samples); transpose a (samples, "
                            "channels) array (soundfile's layout) with .T")
        if data.dtype == np.int16:
            data = data.astype(np.float32) / 32768.0
        elif not np.issubdtype(data.dtype, np.floating):
            raise AvtkError(f"{name} has dtype {data.dtype}: give float samples (full scale +-1) or int16 PCM")
        data = np.asarray(data if data.ndim == 2 else data[None], np.float32).T  # (samples, channels)
        check_samples(data, rate, name)
        wave, what = mono_at_rate(data, rate, self.sample_rate, channel, name)
        return self._long_enough(wave, name), f"{name}: {what}"

    def _long_enough(self, wave, name):
        if self.net.frontend.num_frames(len(wave)) < 1:
            raise AvtkError(f"{name} is too short: {len(wave)} samples give no feature frames")
        return wave

    def embed(self, audio, sample_rate=16000, channel=0):
        """The embedding, float32 (embed_dim,), of one whole recording: a path or an array at `sample_rate` Hz
        (class doc). The cosine of two is `avtk verify`'s speaker_score; the value equals `avtk
        extract-embeddings` on the same audio within float32 rounding. Errors: `waveform`'s, a recording too
        short for one feature frame, an embedding that is not finite or all zeros (AvtkError naming it)."""
        label = _label(audio, "audio")
        wave, what = self.waveform(audio, sample_rate, channel, label)
        log.info("%s", what)
        return _verify.speaker_embedding(self._fast, wave, label, self.device)

    def embed_batch(self, audios, sample_rate=16000, channel=0, max_frames=20000):
        """float32 (n, embed_dim): `embed` of each recording of `audios` (a list of paths and arrays, all
        arrays at `sample_rate`), batched by length as extract-embeddings batches (avtk.embed.embed, at most
        `max_frames` padded frames a batch; the networks mask the padding, so each row equals `embed`'s)."""
        from avtk.embed import embed

        if isinstance(audios, (str, os.PathLike)):
            raise AvtkError(f"embed_batch: give a list of recordings, not one ({os.fspath(audios)}): embed "
                            "embeds one")
        audios = list(audios)  # a generator is read once
        labels = [_label(a, f"audios[{i}]") for i, a in enumerate(audios)]
        count = Counter(labels)
        keys = [lab if count[lab] == 1 else f"{lab} (item {i})" for i, lab in enumerate(labels)]
        if not keys:
            return np.zeros((0, self.embed_dim), np.float32)

        def items():
            for key, audio in zip(keys, audios):
                wave, what = self.waveform(audio, sample_rate, channel, key)
                log.debug("%s", what)
                yield key, wave

        out = dict(embed(self._fast, items(), "wav", self.device, max_frames, fused=False))
        return np.stack([out[k] for k in keys])  # none is skipped: waveform refuses audio too short

    def embed_features(self, feats):
        """The embedding, float32 (embed_dim,), of one feature matrix (frames, feature dim), numpy or torch, as
        `avtk compute-fbank` writes them: only for a model trained on features (`takes_features`). Errors
        (AvtkError): a model trained on audio, a wrong shape, dtype or dimension, NaN or infinite values, no
        frames, an embedding that is not finite or all zeros."""
        from avtk.embed import check_feature_dim, embed
        from avtk.io.ark import check_finite_value

        if not self.takes_features:
            model = self.config["model"]
            raise AvtkError(f"{self.path} was trained on audio (data.input: {self.config['data'].get('input')}, "
                            f"front end {model.get('frontend')}), not on feature tables: give it audio (embed)")
        x = _as_numpy(feats, "features", "a feature matrix")
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
            raise AvtkError(f"features: expected a float matrix (frames, dim), got {x.dtype} of shape {x.shape}")
        x = check_finite_value(np.asarray(x, np.float32), "features")
        check_feature_dim(self.net, x.shape[1], "features")
        if len(x) == 0:
            raise AvtkError("features: the matrix has no frames")
        return dict(embed(self._fast, [("features", x)], "feats", self.device, fused=False))["features"]

    def embed_items(self, items, input_type="wav", max_frames=20000, skipped=None, crops=None):
        """Yield (key, embedding) for (key, array) items, the arrays audio (samples,) at the model's rate
        (input_type "wav") or features (frames, dim) ("feats"): avtk.embed.embed (length-batched; items that
        give no frames appended to `skipped`), or with crops=(n, length) avtk.embed.embed_with_crops ((1 + n,
        dim) per item: whole, then n crops of `length` samples or frames). What extract-embeddings runs."""
        from avtk.embed import embed, embed_with_crops

        skipped = [] if skipped is None else skipped
        if crops:
            return embed_with_crops(self._fast, items, input_type, self.device, max_frames, skipped, *crops)
        return embed(self._fast, items, input_type, self.device, max_frames, skipped, fused=False)

    def score(self, a, b, sample_rate=16000, channel=0):
        """The cosine of two embeddings or two recordings (each an embedding, a 1-D float array of length
        embed_dim, or any audio `embed` takes); the plain cosine `avtk verify` prints as speaker_score. An
        embedding that is not finite or all zeros is an AvtkError."""
        ea, eb = (self._embedding(x, sample_rate, channel, name) for x, name in ((a, "a"), (b, "b")))
        return cosine(ea, eb, names=(_label(a, "a"), _label(b, "b")))

    def _embedding(self, x, sample_rate, channel, name):
        if not isinstance(x, (str, os.PathLike)):
            array = _as_numpy(x, name, "audio or an embedding")
            if array.ndim == 1 and len(array) == self.embed_dim and np.issubdtype(array.dtype, np.floating):
                return array.astype(np.float32)
            if array.ndim == 1 and self.net.frontend.num_frames(len(array)) < 1:
                raise AvtkError(f"{name}: a vector of {len(array)} values is neither an embedding of {self.path} "
                                f"(dimension {self.embed_dim}) nor audio long enough for one feature frame")
        return self.embed(x, sample_rate, channel)


def _rate(sample_rate, label):
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)) \
            or not float(sample_rate).is_integer() or sample_rate <= 0:
        raise AvtkError(f"{label}: sample_rate {sample_rate!r} is not a positive whole number of Hz")
    return int(sample_rate)


# ---------------------------------------------------------------------------------------------- faces


class FaceModel(_Model):
    """A face network for inference (what `load_model` gives for an iresnet encoder).

    Attributes: net (the FaceNet, eval mode), config, path, device, input_size (the aligned image side, 112),
    embed_dim, threshold (the stored `verify` section, or None).
    """

    KIND, OTHER, OTHERS_NAMES = "face", "speaker", _SPEAKER_ONLY

    def __init__(self, net, config, path="<memory>", device="cpu", threshold=None):
        super().__init__(net, config, path, device, threshold)
        self._reader = FaceReader(self.input_size, device=device)  # keeps its MTCNN once built

    @property
    def input_size(self):
        return int(self.net.input_size)

    def images(self, source, n_frames=5, interval=0.4, label="faces"):
        """(uint8 RGB (n, size, size, 3), description) of a face input: a directory of aligned frames
        (n_frames evenly spaced, in sorted name order, as extract-embeddings chooses them), a video (a frame
        every `interval` s, MTCNN landmarks of the largest face, aligned as extract-face-frames does; n_frames
        evenly spaced of those with a face), or an array of aligned images (n, size, size, 3) or one image
        (size, size, 3), uint8 RGB, numpy or torch, used whole."""
        if isinstance(source, (str, os.PathLike)):
            return self._reader.images(label, source, n_frames, interval)
        x = _as_numpy(source, label, "faces")
        if x.ndim == 3:
            x = x[None]
        size = self.input_size
        if x.ndim != 4 or x.shape[1:] != (size, size, 3) or len(x) == 0:
            raise AvtkError(f"{label}: face images of shape {x.shape}: give aligned RGB images (n, {size}, {size}, "
                            f"3) or one ({size}, {size}, 3) (align them with avtk extract-face-frames)")
        if x.dtype != np.uint8:
            raise AvtkError(f"{label}: face images of dtype {x.dtype}: give uint8 RGB (0-255)")
        return x, f"{label}: {len(x)} aligned images"

    def embed_faces(self, images, n_frames=5, interval=0.4, label="faces"):
        """The face embedding, float32 (embed_dim,), of one face input (`images`: an image array, a frames
        directory or a video): the mean of the L2-normalised embeddings of its images (avtk.embed.face_means),
        extract-embeddings' face embedding. The dot product of two is `avtk verify`'s face_score. Errors
        (AvtkError naming `label` and the file): a missing input, no frames or no face found, an unreadable
        or mis-sized frame, a wrong shape or dtype, an embedding that is not finite or all zeros."""
        x, what = self.images(images, n_frames, interval, label)
        log.info("%s", what)
        return face_embedding(self._fast, x, self.device, f"{label} {_label(images, 'array')}")

    def embed_items(self, items, n_frames=5, batch_frames=64, no_face=None, bad=None):
        """Yield (utt, embedding) for (utt, frames directory) items, `batch_frames` images a batch:
        avtk.embed.embed_faces (utterances without frames appended to `no_face`; with `bad` a list, unreadable
        ones skipped and listed there). What extract-embeddings runs."""
        from avtk.embed import embed_faces

        return embed_faces(self._fast, items, self.device, n_frames, batch_frames, no_face, bad, fused=False)


# ---------------------------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Verification:
    """What Verifier.verify gives: the scores, LLRs and decision of one pair (module doc of avtk.verify).

    speaker_score  cosine of the two speaker embeddings (float)
    face_score     dot product of the two mean face embeddings (the mean frame cosine), or None
    llr            speaker LLR (natural log) from the calibration, or None
    face_llr       face LLR, with a calibration that covers both modalities and faces given, or None
    fused_llr      fused LLR, likewise, or None
    decision       "same", "different", or None when nothing decides (no calibration and no stored threshold)
    decided_by     "fused_llr", "threshold" (the speaker model's stored one), "llr", or None
    face_decision  "same"/"different" by the face model's stored threshold, or None
    lines          the (key, value text) lines `avtk verify` prints, in order
    """

    speaker_score: float
    face_score: Optional[float] = None
    llr: Optional[float] = None
    face_llr: Optional[float] = None
    fused_llr: Optional[float] = None
    decision: Optional[str] = None
    decided_by: Optional[str] = None
    face_decision: Optional[str] = None
    lines: tuple = ()

    @property
    def same(self):
        """True or False by the decision; None when there is none."""
        return None if self.decision is None else self.decision == "same"


class Verifier:
    """Verifies pairs of recordings, and optionally of faces, as `avtk verify` does (that command runs this).

    speaker_model: a SpeakerModel; face_model: a FaceModel or None; calibration: a logreg calibration/fusion
    model (a path, from `avtk fuse --method logreg --model-out`, or an avtk.calibration.FusionModel) or None;
    modalities: its modality names for the speaker and the face score ("audio,face"; default: its modalities in
    order); prior: target prior of LLR decisions (same if LLR > ln((1 - prior) / prior)); channel: a channel
    index (default 0, the first, as every avtk command reads audio) or "mean" (their average); face_frames, interval: frames taken per face input, seconds between a video's frames.
    Decisions: avtk.verify's module doc (fused LLR, else the speaker model's stored threshold, else the LLR).
    """

    def __init__(self, speaker_model, face_model=None, calibration=None, *, modalities=None, prior=0.5,
                 channel=0, face_frames=FACE_FRAMES, interval=FACE_INTERVAL):
        if not isinstance(speaker_model, SpeakerModel):
            what = f"a face model ({speaker_model.path})" if isinstance(speaker_model, FaceModel) \
                else f"a {type(speaker_model).__name__}"
            raise AvtkError(f"Verifier: speaker_model is {what}, not a SpeakerModel (avtk.load_model)")
        if face_model is not None and not isinstance(face_model, FaceModel):
            what = f"a speaker model ({face_model.path})" if isinstance(face_model, SpeakerModel) \
                else f"a {type(face_model).__name__}"
            raise AvtkError(f"Verifier: face_model is {what}, not a FaceModel (avtk.load_model)")
        if isinstance(prior, bool) or not isinstance(prior, (int, float, np.number)):
            raise AvtkError(f"--prior {prior!r}: must be a number in (0, 1)")
        if not 0.0 < prior < 1.0:
            raise AvtkError(f"--prior {prior}: must be in (0, 1)")
        self.speaker_model, self.face_model, self.prior = speaker_model, face_model, prior
        self.channel, self.face_frames, self.interval = channel, face_frames, interval
        self.calibration = load_calibration(calibration, modalities) if calibration is not None else None
        self._calibration_name = _label(calibration, "the calibration")

    def verify(self, a, b, face_a=None, face_b=None, sample_rate=16000, face_labels=("face_a", "face_b")):
        """The Verification of recordings `a` and `b` (paths or arrays at `sample_rate` Hz, as
        SpeakerModel.embed takes them) and optionally of faces `face_a` and `face_b` (as FaceModel.embed_faces
        takes them; give both or neither). face_labels: the names errors give the two face inputs. Errors
        (AvtkError): the embedding errors of the models, faces without a face model, a score, LLR or threshold
        that is not a finite number (no decision is made)."""
        if (face_a is None) != (face_b is None):
            raise AvtkError("give both face_a and face_b, or neither")
        if face_a is not None and self.face_model is None:
            raise AvtkError("face_a/face_b need a face model: Verifier(speaker_model, face_model)")
        names = (_label(a, "a"), _label(b, "b"))
        embeddings = [self.speaker_model.embed(x, sample_rate, self.channel) for x in (a, b)]
        speaker_score = cosine(*embeddings, names=names)
        lines = [("speaker_score", num_text(speaker_score))]
        face_score = llr = face_llr = fused_llr = face_decision = None
        if face_a is not None:
            means = [self.face_model.embed_faces(x, self.face_frames, self.interval, label)
                     for label, x in zip(face_labels, (face_a, face_b))]
            face_score = float(np.dot(means[0], means[1]))
            lines.append(("face_score", num_text(face_score)))
        if self.calibration is not None:
            model, speaker_name, face_name = self.calibration
            llr = calibrated_llr(model, {speaker_name: speaker_score})
            lines.append(("llr", num_text(llr)))
            if face_score is not None and face_name is None:
                log.warning("%s calibrates %s only: no fused LLR", self._calibration_name, speaker_name)
            elif face_score is not None:
                face_llr = calibrated_llr(model, {face_name: face_score})
                lines.append(("face_llr", num_text(face_llr)))
                fused_llr = calibrated_llr(model, {speaker_name: speaker_score, face_name: face_score})
                lines.append(("fused_llr", num_text(fused_llr)))
        decision = decide(speaker_score, self.speaker_model.threshold, llr, fused_llr, self.prior)
        lines += decision
        face_threshold = self.face_model.threshold if face_score is not None else None
        if face_threshold is not None:
            check_number("face score", face_score)
            check_number("stored face threshold", face_threshold["threshold"])
            face_decision = "same" if face_score >= face_threshold["threshold"] else "different"
            lines += [("face_threshold", num_text(face_threshold["threshold"])), ("face_decision", face_decision)]
        told = dict(decision)
        return Verification(speaker_score, face_score, llr, face_llr, fused_llr, told.get("decision"),
                            told.get("decided_by"), face_decision, tuple(lines))


