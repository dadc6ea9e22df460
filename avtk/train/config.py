"""Training configuration: one nested YAML, every key typed and range-checked; unknown keys are errors.

Sections: model, loss, optim, scheduler, data, augment, finetune, runtime. The encoder decides the modality: a
face encoder (iresnet*) trains on face frames (data.input: frames), a speech encoder on features or audio. A
`*_args` mapping (encoder_args, frontend_args) is handed to its constructor, which checks it. Any key can be
overridden from the command line as `section.key=value` (the value is parsed as YAML).

`SCHEMA` declares each key as Key(default, kind, range or choices). A value is checked where it enters (the
YAML file or the override), so an error names that source, the key, the value and what is allowed:
`conf/x.yaml: optim.lr = -0.1: must be > 0`. Kinds: int (not bool), float (an int, or a string such as `1e-3`
that YAML 1.1 leaves unparsed, is read as a float; NaN and infinities are refused), floats (a list of such
numbers, the range applying to each), bool, str, mapping, and any. A key whose default is null also takes null.
"""
import copy
import math
import operator
from typing import NamedTuple

import yaml

from avtk.data import table
from avtk.errors import AvtkError


class Key(NamedTuple):
    """One config key: its default, kind (int, float, bool, str, mapping, any), and either a range such as
    "> 0" or ">= 0, <= 1" (numbers) or the allowed choices (strings)."""
    default: object
    kind: str
    range: str = ""
    choices: tuple = ()


SCHEMA = {
    "model": {
        "encoder": Key("ecapa_tdnn", "str"),            # see avtk.models.ENCODERS (checked when built)
        "encoder_args": Key({}, "mapping"),             # e.g. {channels: 1024, embed_dim: 192}
        "frontend": Key("kaldi_fbank", "str"),          # see avtk.features.FRONTENDS; must match data.input: feats
        "frontend_args": Key({}, "mapping"),
        "cmn": Key(True, "bool"),                       # subtract each utterance's (or crop's) mean feature
        "channels": Key("rgb", "str", choices=("rgb", "bgr")),  # face encoders: rgb (insightface), bgr (V-Vox2)
        # gated_fusion with data.input av: the model sections of the speaker and face networks it fine-tunes,
        # filled by avtk train from finetune.speaker_model and finetune.face_model (not written by hand)
        "speaker_net": Key(None, "mapping"),
        "face_net": Key(None, "mapping"),
    },
    "loss": {
        "name": Key("aam_softmax", "str"),
        "margin": Key(None, "float", ">= 0"),           # null: 0.2 for speech, 0.4 for faces (the seed's)
        "scale": Key(None, "float", "> 0"),             # null: 30 for speech, 64 for faces
        "subcenters": Key(1, "int", ">= 1"),
        "margin_warmup_start": Key(0, "float", ">= 0"),   # epoch where the margin starts to grow from 0
        "margin_warmup_epochs": Key(0, "float", ">= 0"),  # epochs to reach `margin` (0: full margin at once)
    },
    "optim": {
        "name": Key("adam", "str", choices=("adam", "sgd")),
        "lr": Key(0.001, "float", "> 0"),
        "weight_decay": Key(2.0e-5, "float", ">= 0"),
        "momentum": Key(0.9, "float", ">= 0, < 1"),     # sgd
        "nesterov": Key(True, "bool"),                  # sgd
        "encoder_lr_scale": Key(1.0, "float", "> 0"),   # the encoder's lr is lr x this (fine-tuning: < 1)
    },
    "scheduler": {
        "name": Key("exponential", "str", choices=("exponential", "warmup_exponential")),
        "gamma": Key(0.97, "float", "> 0, <= 1"),       # exponential: lr * gamma^epoch (the seed: 0.97)
        "warmup_epochs": Key(0.0, "float", ">= 0"),     # warmup_exponential: linear warm-up, then exponential
        "final_lr": Key(5.0e-5, "float", "> 0"),        # decay to final_lr
    },
    "data": {
        # feats: feats.scp (ark); wav: wav.scp, fbank on the fly; frames: frames.scp (face encoders; one random
        # frame per utterance per step); embeddings: audio_emb.scp and face_emb.scp (audio-visual encoders over
        # frozen encoders' embeddings, avtk.train.av_data.EmbeddingDataset); av: a speech crop (feats.scp or
        # wav.scp, data.speech_input) and face frames (frames.scp) per sample, to fine-tune the speaker and face
        # networks through an audio-visual encoder (avtk.train.av_data.AVDataset). null: the encoder's own
        "input": Key(None, "str", choices=("feats", "wav", "frames", "embeddings", "av")),
        "speech_input": Key("feats", "str", choices=("feats", "wav")),  # av: the speech side's input
        "face_frames": Key(2, "int", ">= 1"),           # av: face frames per sample (their embeddings' mean)
        "crop_seconds": Key(2.0, "float", "> 0"),       # random training crops (wrap-padded when shorter)
        "min_seconds": Key(0.5, "float", ">= 0"),       # shorter utterances are skipped, counted and listed in
                                                        # EXP/train_skipped.txt (never fewer than 1 frame)
        "batch_size": Key(128, "int", ">= 1"),          # global: divided among DDP ranks
        "num_workers": Key(0, "int", ">= 0"),
        "frame_shift_ms": Key(10.0, "float", "> 0"),    # of the features in feats.scp
    },
    "augment": {
        "spec_augment": Key(True, "bool"),              # one time and one frequency mask per crop
        "face_flip": Key(0.5, "float", ">= 0, <= 1"),   # face frames: probability of a horizontal flip,
        "face_blur": Key(0.5, "float", ">= 0, <= 1"),   # of a Gaussian blur (kernel 5-9, sigma 0.1-5),
        "face_grey": Key(0.2, "float", ">= 0, <= 1"),   # and of greyscale
        "wave": Key(False, "bool"),                     # wav input: MUSAN/RIR augmentation from the dirs below
        "noise_dir": Key(None, "str"),
        "music_dir": Key(None, "str"),
        "speech_dir": Key(None, "str"),
        "rir_dir": Key(None, "str"),
        # wav input: speed perturbation, each crop played at one of these speeds (uniformly; multiples of 0.01),
        # pitch and tempo changed, and counted as a new speaker (classes: speakers x speeds; REFERENCE §4).
        # [] or null: off. The seed's VoxCeleb recipes: [1.0, 0.9, 1.1]
        "speed_perturb": Key([], "floats", ">= 0.5, <= 2"),
    },
    "finetune": {
        # the avtk model file (avg_model.pt, a checkpoint, an import-model output) whose network starts a fresh
        # run (`avtk train --init-model`); its model section must equal this config's. null: random init
        "init_model": Key(None, "str"),
        "init_checksum": Key(None, "str"),              # its sha256, recorded by avtk train (if given: checked)
        # the classifier (AAM weights) of a run from init_model: random; mean: each class's mean normalised
        # embedding under the loaded network; keep: init_model's own (a checkpoint or import-model output of
        # the same classes)
        "classifier_init": Key("random", "str", choices=("random", "mean", "keep")),
        "classifier_init_utts": Key(20, "int", ">= 1"),  # mean: utterances per class (one crop each)
        "freeze_encoder_epochs": Key(0, "int", ">= 0"),  # the first N epochs train the classifier alone
        # data.input av: the avtk model files of the speaker and face networks that gated_fusion fine-tunes
        # (their weights start the run; their model sections become model.speaker_net and model.face_net)
        "speaker_model": Key(None, "str"),
        "face_model": Key(None, "str"),
    },
    "runtime": {
        "epochs": Key(10, "int", ">= 1"),
        "seed": Key(0, "int", ">= 0"),
        "device": Key("auto", "str", choices=("auto", "cpu", "cuda")),  # auto: the local rank's GPU, else cpu
        "amp": Key("none", "str", choices=("none", "bf16", "fp16")),    # GPU only; CPU trains in fp32
        "log_interval": Key(20, "int", ">= 1"),         # steps between log lines
        "keep_last": Key(5, "int", ">= 1"),             # epoch checkpoints kept
        "average_last": Key(5, "int", ">= 1"),          # avg_model.pt averages this many last epochs (<= keep_last)
        "threads": Key(0, "int", ">= 0"),               # torch CPU threads per process (0: torch's default)
        "val_interval": Key(1, "int", ">= 1"),          # validate every this many epochs (and after the last)
        "val_max_frames": Key(20000, "int", ">= 1"),    # padded frames per validation batch
        "val_face_frames": Key(5, "int", ">= 1"),       # face validation: evenly spaced frames per utterance
        "dist_timeout_minutes": Key(180.0, "float", "> 0"),  # DDP: how long ranks wait for each other (rank 0
                                                             # validates and saves while the others wait)
    },
    "source": Key(None, "any"),                         # set by avtk import-model: where a model came from
}

# The kind and range of each encoder argument (model.encoder_args), by name. Which arguments an encoder takes,
# and their defaults (null here), come from its constructor's signature (avtk.models.ENCODERS); a test keeps the
# two in step.
ENCODER_ARGS = {
    "in_dim": Key(None, "int", ">= 1"),         # speech: feature dimension (must match the features)
    "channels": Key(None, "int", ">= 1"),       # ecapa_tdnn: a multiple of 8 (the Res2Net scale)
    "embed_dim": Key(None, "int", ">= 1"),
    "pooled": Key(None, "int", ">= 1"),         # ecapa_tdnn: layer4's output
    "attention": Key(None, "int", ">= 1"),      # ecapa_tdnn: attentive pooling's hidden size
    "base_width": Key(None, "int", ">= 1"),     # resnet34/221/293, eres2netv2; campplus: the FCM's width
    "branch_width": Key(None, "int", ">= 1"),   # eres2netv2: a block's branches have planes x this / 64 channels
    "scale": Key(None, "int", ">= 1"),          # eres2netv2: branches per block
    "expansion": Key(None, "int", ">= 1"),      # eres2netv2: a block's output has planes x this channels
    "init_channels": Key(None, "int", ">= 2"),  # campplus: the first TDNN's output
    "growth_rate": Key(None, "int", ">= 1"),    # campplus: channels each D-TDNN layer adds
    "bn_size": Key(None, "int", ">= 1"),        # campplus: a D-TDNN layer's bottleneck is bn_size x growth_rate
    "width": Key(None, "int", ">= 1"),          # iresnet*
    "input_size": Key(None, "int", ">= 16"),    # iresnet*: image side, a multiple of 16
    "dropout": Key(None, "float", ">= 0, < 1"),  # iresnet*
    "audio_dim": Key(None, "int", ">= 1"),      # gated_fusion: the speaker embeddings' dimension
    "face_dim": Key(None, "int", ">= 1"),       # gated_fusion: the face embeddings' dimension
    "hidden": Key(None, "int", ">= 1"),         # gated_fusion: the gate's hidden layer
    "face_dropout": Key(None, "float", ">= 0, < 1"),   # gated_fusion: training samples whose face is removed
    "audio_dropout": Key(None, "float", ">= 0, < 1"),  # gated_fusion: of those keeping it, audio removed
}

# What may change on --resume: keys that do not change the network, the data or the optimisation of the
# epochs to come. Each change is named in the log and recorded in EXP/config_history.yaml.
RESUME_MAY_CHANGE = (
    "runtime.epochs", "runtime.log_interval", "runtime.keep_last", "runtime.average_last", "runtime.threads",
    "runtime.val_interval", "runtime.val_max_frames", "runtime.val_face_frames", "runtime.device",
    "runtime.dist_timeout_minutes", "data.num_workers",
)


def _defaults(schema):
    return {k: _defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


DEFAULTS = _defaults(SCHEMA)

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_KIND_TEXT = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
              "mapping": "a mapping {key: value}", "floats": "a list of numbers"}


def _checked(key, value):
    """`value` of the kind and in the range of `key` (a float kind turns ints and numeric strings into
    floats); a ValueError says what it must be."""
    if value is None:
        if key.default is None or key.kind == "floats":
            return None if key.default is None else []
        raise ValueError(f"must be {_KIND_TEXT[key.kind]}, not null")
    kind = key.kind
    if kind == "floats":
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"must be {_KIND_TEXT[kind]}")
        try:
            return [_checked(key._replace(kind="float"), v) for v in value]
        except ValueError as err:
            raise ValueError(f"each value {err}") from None
    if kind == "float" and not isinstance(value, bool):
        try:
            value = float(value) if isinstance(value, (int, float, str)) else value
        except ValueError:
            pass
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool), "float": lambda v: isinstance(v, float),
          "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
          "mapping": lambda v: isinstance(v, dict), "any": lambda v: True}[kind]
    if not ok(value):
        raise ValueError(f"must be {_KIND_TEXT[kind]}")
    if key.choices and value not in key.choices:
        raise ValueError(f"must be one of {', '.join(key.choices)}")
    for part in filter(None, key.range.split(",")):
        op, bound = part.split()
        if not _OPS[op](value, float(bound)):
            raise ValueError(f"must be {key.range.replace(',', ' and')}")
    return value


def _merge(cfg, update, where, schema=SCHEMA, path=""):
    """cfg updated in place by the nested mapping `update`, each value checked against `schema`; errors name
    `where` (the file or override) and the key."""
    if not isinstance(update, dict):
        sections = f" of sections ({', '.join(schema)})" if not path else ""
        raise AvtkError(f"{where}: {path.rstrip('.') or 'the top level'} must be a mapping{sections}, "
                        f"not {type(update).__name__} {update!r}")
    for key, value in update.items():
        name = f"{path}{key}"
        if key not in schema:
            raise AvtkError(f"{where}: unknown config key '{name}' (known: {', '.join(sorted(map(str, schema)))})")
        if isinstance(schema[key], dict):
            _merge(cfg[key], value, where, schema[key], name + ".")
            continue
        try:
            value = _checked(schema[key], value)
        except ValueError as err:
            raise AvtkError(f"{where}: {name} = {value!r}: {err}") from None
        if schema[key].kind == "mapping" and isinstance(cfg.get(key), dict) and value:
            _deep_update(cfg[key], value, where, name)  # an empty mapping ({}) replaces: it clears the key
        else:
            cfg[key] = value
    if schema is SCHEMA:
        _check_encoder_args(cfg, where, unknown=False)
    return cfg


def _deep_update(mapping, update, where, path):
    """`mapping` updated in place by `update` at any depth (a key of `update` replaces only itself); a path
    through a value that is not a mapping is an AvtkError naming `where`."""
    for key, value in update.items():
        old = mapping.get(key)
        if isinstance(value, dict) and key in mapping and not isinstance(old, dict):
            raise AvtkError(f"{where}: {path}.{key} = {old!r} is not a mapping, so {path}.{key}.{next(iter(value), '')} "
                            "cannot be set")
        if isinstance(value, dict) and isinstance(old, dict):
            _deep_update(old, value, where, f"{path}.{key}")
        else:
            mapping[key] = copy.deepcopy(value)


def _check_encoder_args(cfg, where, unknown=True):
    """model.encoder_args checked against the arguments of model.encoder (its signature, ENCODER_ARGS' kinds and
    ranges); an unknown encoder is left to _check. Errors name `where` and the key. unknown=False: only the
    kinds and ranges of the arguments the encoder takes (as each source enters: a later override may still
    change the encoder); the arguments it does not take are checked once every source is in."""
    import inspect

    from avtk.models import ENCODERS

    model = cfg["model"]
    if model["encoder"] not in ENCODERS:
        return
    params = {p.name: p.default for p in inspect.signature(ENCODERS[model["encoder"]]).parameters.values()}
    for arg, value in model["encoder_args"].items():
        name = f"model.encoder_args.{arg}"
        if arg not in params:
            if not unknown:
                continue
            raise AvtkError(f"{where}: unknown config key '{name}' for encoder {model['encoder']} "
                            f"(known: {', '.join(sorted(params))})")
        try:
            model["encoder_args"][arg] = _checked(ENCODER_ARGS[arg]._replace(default=params[arg]), value)
        except ValueError as err:
            raise AvtkError(f"{where}: {name} = {value!r}: {err}") from None


def parse_override(text):
    """`section.key=value` -> ({section: {key: value}}); the value is read as YAML. A malformed override is an
    AvtkError naming it."""
    path, eq, value = text.partition("=")
    if not eq or not all(path.split(".")):
        raise AvtkError(f"override {text!r} is not of the form section.key=value")
    try:
        tree = yaml.safe_load(value) if value else None
    except yaml.YAMLError as err:
        raise AvtkError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(err)})") from None
    for part in reversed(path.split(".")):
        tree = {part: tree}
    return tree


_yaml_problem = table.yaml_problem


def read_yaml(path):
    """The YAML document of a file, read by `avtk.data.table.read_yaml` (the one reader of YAML files:
    UTF-8 by the text rule, a key repeated in a mapping an error; every error an AvtkError naming file:line)."""
    return table.read_yaml(path, "config ")


def load_config(path=None, overrides=()):
    """The resolved config: defaults, then the YAML file, then `section.key=value` overrides, every key
    checked (kind, range, choices) as it enters, then the cross-key checks. Errors are AvtkError naming the
    file or override, the key, the value and the allowed range."""
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        user = read_yaml(path)
        _merge(cfg, {} if user is None else user, path)
    for text in overrides:
        _merge(cfg, parse_override(text), f"override {text!r}")
    where = f"{path or 'config'}{' with overrides' if overrides else ''}"
    _check(cfg, where)
    _check_encoder_args(cfg, where)
    return cfg


def _resolve_modality(cfg):
    """Fill the modality-dependent defaults (left null in DEFAULTS) and check the input suits the encoder."""
    from avtk.models import modality

    kind = modality(cfg["model"]["encoder"])
    face = kind == "face"
    for section, key, speech, faces in (("loss", "margin", 0.2, 0.4), ("loss", "scale", 30.0, 64.0),
                                        ("data", "input", "feats", "frames")):
        if cfg[section][key] is None:
            cfg[section][key] = faces if face else "embeddings" if kind == "audio-visual" and key == "input" else speech
    takes = {"face": ("frames",), "audio-visual": ("embeddings", "av")}.get(kind, ("feats", "wav"))
    if cfg["data"]["input"] not in takes:
        raise AvtkError(f"config data.input is {cfg['data']['input']} but model.encoder "
                        f"{cfg['model']['encoder']} is a{'n' if kind[0] == 'a' else ''} {kind} encoder "
                        f"(face encoders take data.input: frames, audio-visual ones embeddings or av, speech "
                        f"encoders feats or wav)")
    ft = cfg["finetune"]
    given = [k for k in ("speaker_model", "face_model") if ft[k] is not None]
    if cfg["data"]["input"] == "av" and len(given) < 2:
        raise AvtkError("config data.input is av (fine-tuning the speaker and face networks through "
                        f"{cfg['model']['encoder']}) but finetune.{' and finetune.'.join(k for k in ('speaker_model', 'face_model') if k not in given)} "
                        "is not set: name the avtk model files of both networks")
    if given and cfg["data"]["input"] != "av":
        raise AvtkError(f"config finetune.{given[0]} is set but data.input is {cfg['data']['input']}: the speaker "
                        "and face networks are fine-tuned through an audio-visual encoder with data.input: av")


def _check(cfg, where):
    """The names of registered components, and checks that involve more than one key."""
    from avtk.features import FRONTENDS
    from avtk.models import ENCODERS, LOSSES

    for key, known in (("model.encoder", ENCODERS), ("model.frontend", FRONTENDS), ("loss.name", LOSSES)):
        section, name = key.split(".")
        if cfg[section][name] not in known:
            raise AvtkError(f"{where}: {key} = {cfg[section][name]!r}: must be one of {', '.join(sorted(known))}")
    _resolve_modality(cfg)
    speeds = cfg["augment"]["speed_perturb"]
    if speeds:
        if cfg["data"]["input"] != "wav":
            raise AvtkError(f"{where}: augment.speed_perturb = {speeds}: needs data.input: wav (the speed of "
                            f"audio is changed before the front end), not {cfg['data']['input']}; set "
                            "augment.speed_perturb: [] or train on wav")
        odd = [s for s in speeds if abs(s * 100 - round(s * 100)) > 1e-6]
        if odd or len(set(speeds)) != len(speeds):
            raise AvtkError(f"{where}: augment.speed_perturb = {speeds}: must be distinct multiples of 0.01")
    rt = cfg["runtime"]
    if rt["average_last"] > rt["keep_last"]:
        raise AvtkError(f"{where}: runtime.average_last = {rt['average_last']}: must be <= runtime.keep_last "
                        f"({rt['keep_last']}): only kept checkpoints can be averaged")


def flatten(cfg, schema=SCHEMA, path=""):
    """{'section.key': value} of a config (mappings such as encoder_args stay whole)."""
    flat = {}
    for key, spec in schema.items():
        value = cfg.get(key) if isinstance(cfg, dict) else None
        if isinstance(spec, dict):
            flat.update(flatten(value or {}, spec, f"{path}{key}."))
        else:
            flat[f"{path}{key}"] = spec.default if value is None and key not in (cfg or {}) else value
    return flat


def save_config(cfg, path):
    """Write a config as YAML, atomically."""
    from avtk.io.atomic import atomic_open

    # EXP/config.yaml may be the --config of this very run (a rerun from a run's record): it was read whole
    # before and is replaced by the resolved config, on purpose
    with atomic_open(path, replaces_input=True) as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
