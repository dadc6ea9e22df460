"""Training configuration: one nested YAML, checked against the defaults; unknown keys are errors.

Sections: model, loss, optim, scheduler, data, augment, runtime. The encoder decides the modality: a face
encoder (iresnet*) trains on face frames (data.input: frames), a speech encoder on features or audio. A `*_args` mapping (encoder_args,
frontend_args) is handed to its constructor, which checks it. Any key can be overridden from the command
line as `section.key=value` (the value is parsed as YAML).
"""
import copy

import yaml

from avtk.errors import AvtkError

DEFAULTS = {
    "model": {
        "encoder": "ecapa_tdnn",     # see avtk.models.ENCODERS
        "encoder_args": {},          # e.g. {channels: 1024, embed_dim: 192}
        "frontend": "kaldi_fbank",   # see avtk.features.FRONTENDS; must match the features of data.input: feats
        "frontend_args": {},
        "cmn": True,                 # subtract each utterance's (or crop's) mean feature before the encoder
        "channels": "rgb",           # face encoders: rgb (insightface) or bgr (the seed's V-Vox2)
    },
    "loss": {
        "name": "aam_softmax",
        "margin": None,              # null: 0.2 for speech, 0.4 for faces (the seed's)
        "scale": None,               # null: 30 for speech, 64 for faces
        "subcenters": 1,
        "margin_warmup_start": 0,    # epoch where the margin starts to grow from 0
        "margin_warmup_epochs": 0,   # epochs over which it reaches `margin` (0: full margin from the start)
    },
    "optim": {"name": "adam", "lr": 0.001, "weight_decay": 2.0e-5, "momentum": 0.9, "nesterov": True},
    "scheduler": {
        "name": "exponential",       # exponential: lr * gamma^epoch (the seed: 0.97); warmup_exponential
        "gamma": 0.97,
        "warmup_epochs": 0.0,        # warmup_exponential: linear warm-up, then exponential decay to final_lr
        "final_lr": 5.0e-5,
    },
    "data": {
        "input": None,               # feats: feats.scp (ark); wav: wav.scp, fbank on the fly; frames:
                                     # frames.scp (face encoders; one random frame per utterance per step).
                                     # null: feats for speech encoders, frames for face encoders
        "crop_seconds": 2.0,         # random training crops (wrap-padded when the utterance is shorter)
        "batch_size": 128,           # global: divided among DDP ranks
        "num_workers": 0,
        "frame_shift_ms": 10.0,      # of the features in feats.scp
    },
    "augment": {
        "spec_augment": True,        # one time and one frequency mask per crop
        "face_flip": 0.5,            # face frames: probability of a horizontal flip,
        "face_blur": 0.5,            # of a Gaussian blur (kernel 5-9, sigma 0.1-5),
        "face_grey": 0.2,            # and of greyscale
        "wave": False,               # wav input: MUSAN/RIR augmentation from the dirs below
        "noise_dir": None,
        "music_dir": None,
        "speech_dir": None,
        "rir_dir": None,
    },
    "runtime": {
        "epochs": 10,
        "seed": 0,
        "device": "auto",            # auto: cuda if available (the local rank's GPU), else cpu
        "amp": "none",               # none, bf16 or fp16 (GPU only; CPU trains in fp32)
        "log_interval": 20,          # steps between log lines
        "keep_last": 5,              # epoch checkpoints kept
        "average_last": 5,           # avg_model.pt averages this many last epochs
        "threads": 0,                # torch CPU threads per process (0: torch's default)
        "val_interval": 1,           # validate every this many epochs (and after the last)
        "val_max_frames": 20000,     # padded frames per validation batch
        "val_face_frames": 5,        # face validation: evenly spaced frames per utterance
    },
    "source": None,                  # set by avtk import-model: where an imported model came from
}


def _merge(base, update, where, path=""):
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        name = f"{path}{key}"
        if key not in base:
            raise AvtkError(f"{where}: unknown config key '{name}' (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and not key.endswith("_args"):
            if not isinstance(value, dict):
                raise AvtkError(f"{where}: config key '{name}' must be a mapping")
            out[key] = _merge(base[key], value, where, name + ".")
        else:
            out[key] = value
    return out


def parse_override(text):
    """`section.key=value` -> ({section: {key: value}}); the value is read as YAML."""
    if "=" not in text:
        raise AvtkError(f"override {text!r} is not of the form section.key=value")
    path, value = text.split("=", 1)
    tree = yaml.safe_load(value) if value else None
    for part in reversed(path.split(".")):
        tree = {part: tree}
    return tree


def _deep_update(a, b):
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(a.get(key), dict) and not key.endswith("_args"):
            _deep_update(a[key], value)
        else:
            a[key] = value
    return a


def load_config(path=None, overrides=()):
    """The resolved config: defaults, then the YAML file, then `section.key=value` overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        try:
            with open(path) as f:
                user = yaml.safe_load(f) or {}
        except OSError as err:
            raise AvtkError(f"cannot read config {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise AvtkError(f"{path}: not valid YAML: {err}") from None
        cfg = _merge(cfg, user, path)
    for text in overrides:
        cfg = _merge(cfg, parse_override(text), f"override {text!r}")
    _check(cfg)
    return cfg


def _resolve_modality(cfg):
    """Fill the modality-dependent defaults (left null in DEFAULTS) and check the input suits the encoder."""
    from avtk.models import modality

    face = modality(cfg["model"]["encoder"]) == "face"
    for section, key, speech, faces in (("loss", "margin", 0.2, 0.4), ("loss", "scale", 30.0, 64.0),
                                        ("data", "input", "feats", "frames")):
        if cfg[section][key] is None:
            cfg[section][key] = faces if face else speech
    if face != (cfg["data"]["input"] == "frames"):
        raise AvtkError(f"config data.input is {cfg['data']['input']} but model.encoder "
                        f"{cfg['model']['encoder']} is a {'face' if face else 'speech'} encoder "
                        f"(face encoders take data.input: frames, speech encoders feats or wav)")


def _check(cfg):
    _resolve_modality(cfg)
    choices = {
        ("data", "input"): ("feats", "wav", "frames"),
        ("model", "channels"): ("rgb", "bgr"),
        ("runtime", "amp"): ("none", "bf16", "fp16"),
        ("optim", "name"): ("adam", "sgd"),
        ("scheduler", "name"): ("exponential", "warmup_exponential"),
    }
    for (section, key), allowed in choices.items():
        if cfg[section][key] not in allowed:
            raise AvtkError(f"config {section}.{key} = {cfg[section][key]!r}; choose one of {', '.join(allowed)}")
    if cfg["runtime"]["epochs"] < 1 or cfg["data"]["batch_size"] < 1:
        raise AvtkError("config runtime.epochs and data.batch_size must be at least 1")


def save_config(cfg, path):
    from avtk.io.atomic import atomic_open

    with atomic_open(path) as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
