"""Foreign checkpoints -> avtk model files (what `avtk.embed.load_model` and `avtk extract-embeddings` read).

Formats (REFERENCE §1, "Released checkpoints"; all are torch-saved flat state_dicts):

================  ===========================================================  =============================
format            file keys                                                    avtk network
================  ===========================================================  =============================
a-vox2            the seed's A-Vox2.model: 231 ECAPA-TDNN (C=1024) keys, the    SpeakerNet: ecapa_tdnn
                  3 front-end buffers ``torchfbank.*``, ``weight`` [n, 192]     (channels 1024, in_dim 80,
                                                                                embed_dim 192), front end
                                                                                ``seed``, cmn off
ecapa-pretrain    ECAPA-TDNN's pretrain.model: the same keys prefixed           as a-vox2; C is read from
                  ``speaker_encoder.``, plus ``speaker_loss.weight``            ``conv1.weight`` (the
                                                                                ECAPA-TDNN recipe's --C)
v-vox2            the seed's V-Vox2.model: 187 iresnet18 keys (insightface      FaceNet: iresnet18,
                  names), ``weight`` [n, 512]                                   channels bgr
v-glint           V-Glint.model: insightface iresnet50 backbone (475 keys)      FaceNet: iresnet50, bgr
insightface       a backbone.pth of any depth                                   FaceNet: iresnet of --arch or
                                                                                of the depth its blocks give
                                                                                (width and embedding size
                                                                                read from conv1 / fc), rgb
================  ===========================================================  =============================

Mapping: encoder keys keep their names under ``encoder.`` (avtk's modules use the seed's and insightface's
names), the seed's ``torchfbank.*`` buffers go to ``frontend.torchfbank.*`` (avtk's seed front end has the same
layout, and the checkpoint's own values are used; a warning says if they differ from the filterbank avtk
builds), and the AAM-softmax matrix (``weight`` / ``speaker_loss.weight``) is kept beside the network, under
the model file's ``"loss"`` entry as an ``AamSoftmax`` state_dict ({"weight": [n, embed_dim]}); extraction
does not need it. The seed's front end already subtracts each utterance's mean (the seed did so inside its
model), so ``model.cmn`` is off and the encoder sees exactly the seed's features.

Channel order (``model.channels``, applied in one place: avtk.models.face_net.FaceNet.normalize, which every
face path -- training, extract-embeddings, verify, export -- runs). The seed read every face frame with
OpenCV's ``cv2.imread``, which gives BGR, and fed that to both its face networks (REFERENCE §1, face network:
"The seed feeds BGR"; "Known defects": "BGR is fed to an RGB model"). So the seed's two files import as
``bgr``: V-Vox2 was trained that way, and V-Glint (insightface's iresnet50, trained on RGB) is fed BGR by the
seed's evaluation, which its published face and fusion numbers come from; importing it as ``bgr`` reproduces
them. A plain insightface ``backbone.pth`` imports as ``rgb``, the order insightface trains on. ``channels``
(``--channels``) overrides the format's order, e.g. ``rgb`` runs V-Glint as insightface meant it; the source
entry records which order was used and where it came from.

Speakers: a file with an AAM matrix gets placeholder names ``spk0000``... (one per row, so the count of
training speakers is kept; the seed's checkpoints do not say which speaker a row is); one without gets [].

Checking: the file's keys, after the format's renaming, are compared with the network's state_dict. Every
missing, unexpected and mis-shaped key is logged (in the file's naming, with the file's and the network's
shapes) and the import fails with an `ImportMismatch` (an AvtkError) unless ``allow_partial``: then what
matches is loaded, the rest of the network keeps its (seeded) initialisation, and a warning counts them. A
file that matches no key at all is an error either way (its keys are then not listed one by one: it has
another layout, and the error names the format it looks like). ``num_batches_tracked`` buffers that the file
lacks are filled silently (with the network's 0): they do not affect inference. Floating tensors of another
precision (fp16 backbones) are converted to the network's dtype. A file whose keys all start with
``module.`` (torch DataParallel) has the prefix removed. Files are read with ``weights_only=True``: plain
tensors, never arbitrary pickled objects.

The written config is a complete resolved training config (`avtk.train.config.load_config`) with the front
end and channel order, plus a ``source`` entry: format, input path, sha256 of the input file, the keys
loaded and, after a partial import, the keys that were not.
"""
import hashlib
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field

import torch

from avtk.errors import AvtkError

log = logging.getLogger(__name__)

#: format -> modality, the AAM matrix's key in the file, the prefix of the network keys (speech), the default
#: network (faces; None: inferred from the blocks) and the channel order (faces)
FORMATS = {
    "a-vox2": {"modality": "speech", "loss_key": "weight", "prefix": ""},
    "ecapa-pretrain": {"modality": "speech", "loss_key": "speaker_loss.weight", "prefix": "speaker_encoder."},
    "v-vox2": {"modality": "face", "loss_key": "weight", "arch": "iresnet18", "channels": "bgr"},
    "v-glint": {"modality": "face", "loss_key": None, "arch": "iresnet50", "channels": "bgr"},  # as the seed fed it
    "insightface": {"modality": "face", "loss_key": None, "arch": None, "channels": "rgb"},
}
FACE_ARCHS = ("iresnet18", "iresnet34", "iresnet50", "iresnet100")
SEED_ECAPA = {"in_dim": 80, "channels": 1024, "embed_dim": 192}
FRONTEND_PREFIX = "torchfbank."
# how far (absolute) the checkpoint's front-end buffers may be from avtk's own before a warning
FRONTEND_TOLERANCE = 1e-5


def shape_str(shape):
    return "[" + ", ".join(str(int(n)) for n in shape) + "]"


@dataclass
class ImportReport:
    """What an import matched. Names are the file's keys (a missing key: the name the file should have had)."""

    fmt: str
    path: str
    arch: str = ""
    encoder_args: dict = field(default_factory=dict)
    expected: int = 0                                   # keys of the network's state_dict
    loaded: list = field(default_factory=list)          # network keys taken from the file
    filled: list = field(default_factory=list)          # num_batches_tracked the file lacks (silently filled)
    missing: list = field(default_factory=list)         # (file name, network shape)
    unexpected: list = field(default_factory=list)      # (file name, file shape)
    mismatched: list = field(default_factory=list)      # (file name, file shape, network shape)
    converted: int = 0                                  # tensors cast to the network's dtype
    parameters: int = 0
    notes: list = field(default_factory=list)           # warnings that are not key problems

    @property
    def problems(self):
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def problem_lines(self):
        """One line per missing, unexpected and mis-shaped key."""
        lines = [f"missing key {name}: the network expects {shape_str(shape)}" for name, shape in self.missing]
        lines += [f"unexpected key {name} {shape_str(shape)}: no such key in {self.arch}"
                  for name, shape in self.unexpected]
        lines += [f"mis-shaped key {name}: file {shape_str(have)}, network {shape_str(want)}"
                  for name, have, want in self.mismatched]
        return lines

    def counts(self):
        return (f"{len(self.missing)} missing, {len(self.unexpected)} unexpected and "
                f"{len(self.mismatched)} mis-shaped key{'s' if self.problems != 1 else ''}")

    def summary(self):
        """The counts of each kind of problem, with the first key of each."""
        def kind(items, label, show):
            return f"{len(items)} {label}" + (f" (e.g. {show(items[0])})" if items else "")

        return "keys: " + ", ".join([
            kind(self.missing, "missing", lambda m: f"{m[0]} {shape_str(m[1])}"),
            kind(self.unexpected, "unexpected", lambda u: f"{u[0]} {shape_str(u[1])}"),
            kind(self.mismatched, "mis-shaped",
                 lambda m: f"{m[0]}: file {shape_str(m[1])}, network {shape_str(m[2])}"),
        ])


class ImportMismatch(AvtkError):
    """The checkpoint does not fit the network (the report lists how); AvtkError, so users see one message."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


@dataclass
class Imported:
    """An imported checkpoint: the network's state_dict, the resolved config, speakers, the AAM loss state."""

    weights: dict
    config: dict
    speakers: list
    loss: dict
    report: ImportReport


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path):
    """A flat {name: tensor} state_dict from a torch-saved file; AvtkError naming the file otherwise."""
    import pickle
    import zipfile

    if not os.path.isfile(path):
        raise AvtkError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are no news to users
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise AvtkError(f"cannot read {path}: {err.strerror or err}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, UnicodeDecodeError,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as err:
        text = str(err)
        if "Weights only load failed" in text:
            found = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
            detail = found.group(1).strip()[:200] if found else "an unsupported pickle"
            pickled = re.search(r"GLOBAL (\S+) was not an allowed global", text)
            if pickled:
                detail = f"it pickles a {pickled.group(1)}"
            if not _torch_file(path):
                raise AvtkError(f"{path}: not a torch checkpoint ({detail})") from None
            raise AvtkError(f"{path}: holds pickled objects other than tensors ({detail}); avtk reads checkpoints "
                            "with torch.load(weights_only=True) and never runs code from a file: save the "
                            "state_dict alone (torch.save(model.state_dict(), path))") from None
        first = text.strip().splitlines()[0][:200] if text.strip() else ""
        raise AvtkError(f"{path}: not a torch checkpoint (torch.load cannot read it: {type(err).__name__}"
                        f"{': ' + first if first else ''})") from None
    if not isinstance(state, dict):
        raise AvtkError(f"{path}: not a state_dict (a mapping of names to tensors) but a {type(state).__name__}")
    if "model" in state and "config" in state:
        raise AvtkError(f"{path}: already an avtk model file; use it with avtk extract-embeddings as it is")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        hint = ""
        for wrapper in ("state_dict", "model", "model_state_dict", "net"):
            if isinstance(state.get(wrapper), dict):
                hint = f"; its '{wrapper}' entry may hold the weights (save that entry alone, then import it)"
                break
        raise AvtkError(f"{path}: not a flat state_dict: entry {bad[0]!r} is a {type(state[bad[0]]).__name__}, "
                        f"not a tensor{hint}")
    if not state:
        raise AvtkError(f"{path}: an empty state_dict")
    if all(k.startswith("module.") for k in state):
        log.info("%s: removed the DataParallel prefix 'module.' from every key", path)
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _torch_file(path):
    """Whether the file looks written by torch.save (a zip archive, or the legacy pickle with torch's magic)."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(4)
    return zipfile.is_zipfile(path) or head == b"\x80\x02\x8a\n"


def _iresnet_blocks(keys):
    """Blocks per stage (layer1..layer4) that insightface keys name."""
    blocks = []
    for stage in range(1, 5):
        found = [int(m.group(1)) for k in keys for m in [re.match(rf"layer{stage}\.(\d+)\.", k)] if m]
        blocks.append(max(found) + 1 if found else 0)
    return blocks


def infer_iresnet(state, path):
    """The iresnet name (iresnet18...) whose blocks per stage the keys name; AvtkError if none."""
    from avtk.models.iresnet import DEPTHS

    blocks = _iresnet_blocks(state)
    for depth, spec in DEPTHS.items():
        if spec == blocks:
            return f"iresnet{depth}"
    known = ", ".join(f"r{d} {spec}" for d, spec in DEPTHS.items())
    raise AvtkError(f"{path}: its keys name {blocks} blocks per stage, which is no iresnet depth ({known}); "
                    f"give --arch")


def guess_format(state):
    """The format whose key names `state` looks like (a hint for error messages), or None."""
    keys = set(state)
    if any(k.startswith("speaker_encoder.") for k in keys):
        return "ecapa-pretrain"
    if "layer1.convs.0.weight" in keys or any(k.startswith(FRONTEND_PREFIX) for k in keys):
        return "a-vox2"
    if "layer1.0.conv1.weight" in keys:
        if "weight" in keys:
            return "v-vox2"
        return "v-glint" if _iresnet_blocks(keys) == [3, 4, 14, 3] else "insightface"
    return None


def _architecture(fmt, state, arch, path):
    """(encoder name, encoder_args) for the file: the format's network, with what the keys say where it varies."""
    spec = FORMATS[fmt]
    if spec["modality"] == "speech":
        if arch not in (None, "ecapa_tdnn"):
            raise AvtkError(f"--arch {arch} does not apply to format {fmt} (an ECAPA-TDNN)")
        args = dict(SEED_ECAPA)
        conv1 = state.get(spec["prefix"] + "conv1.weight")
        if fmt == "ecapa-pretrain" and conv1 is not None and conv1.dim() == 3 and conv1.shape[0] % 8 == 0:
            args["channels"] = int(conv1.shape[0])
        return "ecapa_tdnn", args
    if arch is not None and arch not in FACE_ARCHS:
        raise AvtkError(f"--arch {arch} is not a face network of format {fmt}; choose {', '.join(FACE_ARCHS)}")
    name = arch or spec["arch"] or infer_iresnet(state, path)
    args = {"width": 64, "embed_dim": 512}
    if fmt == "insightface":
        conv1, fc = state.get("conv1.weight"), state.get("fc.weight")
        if conv1 is not None and conv1.dim() == 4:
            args["width"] = int(conv1.shape[0])
        if fc is not None and fc.dim() == 2:
            args["embed_dim"] = int(fc.shape[0])
    return name, args


def _config(spec, encoder, encoder_args, channels):
    from avtk.train.config import load_config

    overrides = [f"model.encoder={encoder}", f"model.encoder_args={json.dumps(encoder_args)}"]
    if spec["modality"] == "speech":
        overrides += ["model.frontend=seed", "model.cmn=false", "data.input=wav"]
    else:
        overrides += [f"model.channels={channels}"]
    return load_config(None, overrides)


def _to_network_name(spec, key):
    """The network key a file key maps to (speech: under encoder. or frontend.; faces: under encoder.)."""
    if spec["modality"] == "face":
        return "encoder." + key
    prefix = spec["prefix"]
    if not key.startswith(prefix):
        return None
    name = key[len(prefix):]
    return ("frontend." if name.startswith(FRONTEND_PREFIX) else "encoder.") + name


def _to_file_name(spec, name):
    """The inverse of _to_network_name, to name a missing key as the file should have it."""
    rest = name.split(".", 1)[1]  # drop encoder. / frontend.
    return rest if spec["modality"] == "face" else spec["prefix"] + rest


def _check_frontend(weights, report):
    """Note (and warn) where the checkpoint's front-end buffers differ from the ones avtk builds."""
    from avtk.features import build_frontend

    fresh = build_frontend("seed").state_dict()
    for key, ref in fresh.items():
        name = "frontend." + key
        if name not in report.loaded:
            continue
        diff = float((weights[name].double() - ref.double()).abs().max())
        if diff > FRONTEND_TOLERANCE:
            report.notes.append(f"front-end buffer {key} differs from avtk's seed front end by up to {diff:.3g}; "
                                "the checkpoint's values are used")


def _log_problems(report, level):
    for line in report.problem_lines():
        log.log(level, "%s", line)


def import_checkpoint(path, fmt, arch=None, allow_partial=False, channels=None):
    """Import the checkpoint `path` of format `fmt` (see FORMATS). Returns an `Imported`.

    `arch`: a face network (iresnet18/34/50/100) instead of the format's (insightface: inferred from the
    blocks). `channels`: "rgb" or "bgr", the order a face network is fed, instead of the format's (see the
    module notes); an AvtkError for a speech format. Raises ImportMismatch (an AvtkError) when keys are
    missing, unexpected or mis-shaped, unless `allow_partial`; every such key is logged first.
    """
    from avtk.embed import check_weights, nonfinite
    from avtk.models import build_network

    path = os.fspath(path)
    if fmt not in FORMATS:
        raise AvtkError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    if channels is not None and (spec["modality"] != "face" or channels not in ("rgb", "bgr")):
        raise AvtkError(f"--channels {channels} does not apply to format {fmt}"
                        + ("" if spec["modality"] == "face" else " (a speech network)") + "; face formats take rgb or bgr")
    state = read_state_dict(path)
    encoder, encoder_args = _architecture(fmt, state, arch, path)
    cfg = _config(spec, encoder, encoder_args, channels or spec.get("channels"))
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
        torch.manual_seed(0)  # what a partial import leaves unloaded is the same every time
        net = build_network(cfg["model"])
    target = net.state_dict()
    report = ImportReport(fmt=fmt, path=path, arch=encoder, encoder_args=encoder_args, expected=len(target))

    loss_weight = None
    weights = dict(target)
    covered = set()
    embed_dim = encoder_args["embed_dim"]
    for key, value in state.items():
        if spec["loss_key"] is not None and key == spec["loss_key"]:
            if value.dim() != 2 or value.shape[1] != embed_dim:
                want = (value.shape[0] if value.dim() else 0, embed_dim)
                report.mismatched.append((key, tuple(value.shape), want))
            else:
                loss_weight = value.detach().float().contiguous()
            continue
        name = _to_network_name(spec, key)
        if name is None or name not in target:
            report.unexpected.append((key, tuple(value.shape)))
            continue
        covered.add(name)
        want = target[name]
        if tuple(value.shape) != tuple(want.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(want.shape)))
            continue
        if value.dtype != want.dtype:
            report.converted += 1
        weights[name] = value.detach().to(want.dtype).contiguous()
        report.loaded.append(name)
    for name in target:
        if name in covered:
            continue
        if name.endswith(".num_batches_tracked"):
            report.filled.append(name)
        else:
            report.missing.append((_to_file_name(spec, name), tuple(target[name].shape)))

    if report.problems:
        summary = f"{path} does not fit {encoder} (format {fmt}): {report.summary()}"
        guess = guess_format(state)
        if guess and guess != fmt:
            summary += f"; the keys look like format {guess}"
        if not report.loaded:  # another layout altogether: a listing of every key would say nothing more
            raise ImportMismatch(f"{summary}; no key matches, so nothing can be imported", report)
        if not allow_partial:
            _log_problems(report, logging.ERROR)
            raise ImportMismatch(f"{summary} (every one is listed above); --allow-partial loads the "
                                 f"{len(report.loaded)} keys that fit", report)
        _log_problems(report, logging.WARNING)
        log.warning("partial import (--allow-partial): loaded %d of %d network keys; %s (missing and mis-shaped "
                    "ones keep their initial values, unexpected ones are dropped)", len(report.loaded),
                    report.expected, report.counts())
    net.load_state_dict(weights, strict=True)
    check_weights(net, path)  # a NaN or an infinity in the file is an error, as in every model reader
    bad = nonfinite([(spec["loss_key"], loss_weight)]) if loss_weight is not None else ""
    if bad:
        raise AvtkError(f"{path}: the weights hold NaN or infinite values ({bad}): the model is unusable")
    weights = net.state_dict()
    if report.converted:
        log.info("converted %d tensors to the network's dtype", report.converted)
    if spec["modality"] == "speech":
        _check_frontend(weights, report)
    for note in report.notes:
        log.warning("%s", note)
    report.parameters = sum(p.numel() for p in net.parameters())

    source = {"format": fmt, "path": os.path.abspath(path), "sha256": sha256_file(path),
              "keys_loaded": len(report.loaded), "keys_expected": report.expected}
    if spec["modality"] == "face":
        source["channels"] = cfg["model"]["channels"]
        source["channels_from"] = "--channels" if channels else f"format {fmt}"
    if report.problems:
        source["missing"] = [name for name, _ in report.missing]
        source["unexpected"] = [name for name, _ in report.unexpected]
        source["mis_shaped"] = [name for name, _, _ in report.mismatched]
    cfg["source"] = source
    loss, speakers = {}, []
    if loss_weight is not None:
        loss = {"weight": loss_weight}
        digits = max(4, len(str(loss_weight.shape[0] - 1)))
        speakers = [f"spk{i:0{digits}d}" for i in range(loss_weight.shape[0])]
    return Imported(weights=weights, config=cfg, speakers=speakers, loss=loss, report=report)


def write_model(path, imported):
    """An avtk model file (avtk.embed.save_model's layout) with the AAM matrix under "loss" when there is one."""
    from avtk.io.atomic import atomic_path

    blob = {"model": imported.weights, "config": imported.config, "speakers": list(imported.speakers),
            "epochs": None, "loss": imported.loss}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def describe(imported):
    """One summary line: format, network, front end / channel order, parameters, keys loaded, the AAM matrix."""
    r, cfg = imported.report, imported.config["model"]
    args = ", ".join(f"{k} {v}" for k, v in r.encoder_args.items())
    if cfg["encoder"] == "ecapa_tdnn":
        io = f"front end {cfg['frontend']}, cmn {'on' if cfg['cmn'] else 'off'}"
    else:
        io = f"channels {cfg['channels']}"
    aam = (f"AAM matrix {shape_str(imported.loss['weight'].shape)} kept under 'loss' "
           f"({len(imported.speakers)} placeholder speakers)" if imported.loss else "no AAM matrix")
    filled = f", {len(r.filled)} num_batches_tracked filled" if r.filled else ""
    return (f"format {r.fmt}: {r.arch} ({args}), {io}; {r.parameters:,} parameters; "
            f"loaded {len(r.loaded)} of {r.expected} keys{filled}; {aam}")
