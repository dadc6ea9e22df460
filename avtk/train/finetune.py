"""Fine-tuning: a fresh training run that starts from another model's network (`avtk train --init-model`).

The front end and encoder come from an avtk model file (EXP/avg_model.pt, a checkpoint, an `avtk import-model`
output) whose model section equals the config's. The classifier (the AAM-softmax weights) is set for the new
classes (finetune.classifier_init): random; `mean`, each class's mean L2-normalised embedding under the loaded
network; or `keep`, the file's own (same classes). The encoder can be frozen for the first epochs
(finetune.freeze_encoder_epochs) and trained at a scaled learning rate (optim.encoder_lr_scale). The file's path
and sha256 go into the resolved config (finetune.init_model, finetune.init_checksum). Keys: avtk/train/config.py.
"""
import inspect
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F

from avtk.errors import AvtkError

log = logging.getLogger(__name__)
# encoder arguments that change training, not the network: they may differ from the initial model's
TRAINING_ONLY_ARGS = ("dropout",)


def record_init(cfg, init_model=None):
    """Set finetune.init_model (to `init_model`, when given: --init-model overrides the config) and
    finetune.init_checksum (the file's sha256) in `cfg`; returns the path, or None without one. A checksum the
    config already records for the same path must match (the file changed: AvtkError naming both)."""
    from avtk.models.importer import sha256_file

    ft = cfg["finetune"]
    if init_model is not None and os.fspath(init_model) != ft["init_model"]:
        ft["init_model"], ft["init_checksum"] = os.fspath(init_model), None
    path = ft["init_model"]
    if path is None:
        return None
    if not os.path.isfile(path):
        raise AvtkError(f"finetune.init_model {path}: {'is a directory' if os.path.isdir(path) else 'no such file'}")
    digest = sha256_file(path)
    if ft["init_checksum"] not in (None, digest):
        raise AvtkError(f"finetune.init_model {path}: its sha256 is {digest}, but the config records "
                        f"finetune.init_checksum {ft['init_checksum']}: the file changed since")
    ft["init_checksum"] = digest
    return path


def check_needs_model(cfg):
    """AvtkError when a fine-tuning key asks for an initial model that the config lacks."""
    ft = cfg["finetune"]
    if ft["init_model"] is not None or cfg["data"]["input"] == "av":  # av: speaker_model and face_model
        return
    for key, value, off in (("classifier_init", ft["classifier_init"], "random"),
                            ("freeze_encoder_epochs", ft["freeze_encoder_epochs"], 0)):
        if value != off:
            raise AvtkError(f"finetune.{key} = {value!r} needs an initial model (avtk train --init-model MODEL, or "
                            f"finetune.init_model); without one, set finetune.{key}: {off!r}")


def _model_keys(model):
    """{'model.key[.arg]': value} of the keys of a model section that define the network and its input, the
    arguments filled with their defaults (an encoder's signature, a front end's options)."""
    from avtk.features import frontend_options
    from avtk.models import ENCODERS, modality

    name = model.get("encoder")
    keys = {"model.encoder": name}
    if name in ENCODERS:
        params = inspect.signature(ENCODERS[name]).parameters
        args = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
        args.update(model.get("encoder_args") or {})
        keys.update({f"model.encoder_args.{k}": v for k, v in args.items() if k not in TRAINING_ONLY_ARGS})
        if modality(name) == "face":
            keys["model.channels"] = model.get("channels", "rgb")
            return keys
    try:
        options = frontend_options(model.get("frontend", "kaldi_fbank"))
    except AvtkError:
        options = {}
    options.update(model.get("frontend_args") or {})
    keys.update({"model.frontend": model.get("frontend", "kaldi_fbank"), "model.cmn": model.get("cmn", True)})
    keys.update({f"model.frontend_args.{k}": v for k, v in options.items()})
    return keys


def model_misfit(file_model, config_model):
    """"" when two model sections define the same network and input (TRAINING_ONLY_ARGS aside), else
    "key: A in the model file, B in the config" for each differing key, joined by "; "."""
    ours, theirs = _model_keys(config_model), _model_keys(file_model)
    return "; ".join(f"{k}: {theirs.get(k, '(none)')!r} in the model file, {ours.get(k, '(none)')!r} in the config"
                     for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k))


def load_network(net, cfg, path):
    """Load the network weights (front end and encoder) of the avtk model file `path` into `net`, built from
    `cfg`; returns the file's dict (avtk.embed.read_model_file). A model section that differs from the
    config's (`model_misfit`), weights that do not fit (avtk.embed.weights_misfit) or hold NaN/inf are one
    AvtkError naming the file and the keys."""
    from avtk.embed import check_weights, read_model_file, weights_misfit

    blob = read_model_file(path)
    what = f"finetune.init_model {path}"
    misfit = model_misfit(blob["config"]["model"], cfg["model"])
    if misfit:
        raise AvtkError(f"{what}: its network does not fit the config: {misfit} (fine-tuning keeps the network: "
                        "make the config's model section that of the model file)")
    misfit = weights_misfit(net, blob["model"])
    if misfit:
        raise AvtkError(f"{what}: its weights do not fit the network of the config: {misfit}")
    net.load_state_dict(blob["model"])
    check_weights(net, path)
    return blob


def keep_classifier(loss, blob, classes, path):
    """Load the classifier of the model file's dict `blob` into `loss`: it must hold one ("loss": a checkpoint
    or import-model output; avg_model.pt holds none) for the same `classes` (names, in order)."""
    state, theirs = blob.get("loss"), list(blob.get("speakers") or [])
    what = f"finetune.classifier_init = 'keep': {path}"
    if not isinstance(state, dict) or "weight" not in state:
        raise AvtkError(f"{what} holds no classifier (avg_model.pt holds only the network; a checkpoint "
                        "EXP/checkpoints/epoch_NNN.pt holds both): use classifier_init mean or random")
    if theirs != list(classes):
        first = next((i for i, (a, b) in enumerate(zip(theirs, classes)) if a != b), min(len(theirs), len(classes)))
        raise AvtkError(f"{what} classifies {len(theirs)} classes, the training data {len(classes)}, first "
                        f"difference at class {first}: keep needs the same classes; use classifier_init mean or random")
    if tuple(state["weight"].shape) != tuple(loss.weight.shape):
        raise AvtkError(f"{what}: its classifier is {list(state['weight'].shape)}, this loss "
                        f"{list(loss.weight.shape)} (loss.subcenters?)")
    with torch.no_grad():
        loss.weight.copy_(state["weight"])


class _PlainCrops(torch.utils.data.Dataset):
    """(index, speed) pairs of a training dataset, each read as its epoch-0 sample without augmentation."""

    def __init__(self, dataset, items):
        self.dataset, self.items = dataset, items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, j):
        index, speed = self.items[j]
        return self.dataset.sample(index, 0, speed, augment=False)


def mean_items(labels, num_speeds, per_class, seed):
    """[(utterance index, speed index)] for class means: up to `per_class` utterances of each speaker (a
    seeded random choice among `labels`, the speakers' indices), each at every speed (range(num_speeds), or
    [None] without speed perturbation)."""
    order = np.random.default_rng([seed, 11]).permutation(len(labels))
    taken, chosen = {}, []
    for i in order.tolist():
        spk = int(labels[i])
        if taken.get(spk, 0) < per_class:
            taken[spk] = taken.get(spk, 0) + 1
            chosen.append(i)
    speeds = list(range(num_speeds)) if num_speeds else [None]
    return [(i, k) for i in sorted(chosen) for k in speeds]


def _plain_batches(dataset, per_class, seed, batch_size, num_workers):
    """Batches (crops, labels, indices) of `mean_items` of `dataset`, un-augmented; an unreadable one is an
    AvtkError."""
    from avtk.train.data import Failed, collate

    items = mean_items(dataset.labels, len(getattr(dataset, "speeds", ())), per_class, seed)
    loader = torch.utils.data.DataLoader(_PlainCrops(dataset, items), batch_size=batch_size, collate_fn=collate,
                                         num_workers=num_workers)
    for batch in loader:
        if isinstance(batch, Failed):
            raise AvtkError(batch.message)
        yield batch


@torch.no_grad()
def class_means(net, dataset, num_classes, features, device, batch_size, num_workers=0, per_class=20, seed=0):
    """(float32 (num_classes, embed_dim) mean L2-normalised embeddings, int64 (num_classes,) counts) of
    `dataset`'s classes under `net` in eval mode: one un-augmented training crop of up to `per_class`
    utterances per speaker (at each speed with speed perturbation). `features(crops)` turns a batch of crops
    into the encoder's input. A class without a sample has a zero row and count 0."""
    sums, counts = None, torch.zeros(num_classes, dtype=torch.int64)
    was_training = net.training
    net.eval()
    try:
        for crops, labels, _ in _plain_batches(dataset, per_class, seed, batch_size, num_workers):
            emb = F.normalize(net.encode(features(crops)).float(), dim=1).cpu()
            sums = torch.zeros(num_classes, emb.shape[1]) if sums is None else sums
            sums.index_add_(0, labels, emb)
            counts += torch.bincount(labels, minlength=num_classes)
    finally:
        net.train(was_training)
    return sums / counts.clamp(min=1).unsqueeze(1).float(), counts


@torch.no_grad()
def joint_means(net, dataset, features, batch_size, num_workers=0, per_class=20, seed=0):
    """(audio mean float32 (audio_dim,), face mean (face_dim,)): the means that a JointNet holding its speaker
    and face networks centres by, of the embeddings those networks give (in eval mode, `JointNet.rows`) of one
    un-augmented crop of up to `per_class` utterances per speaker; the face mean over utterances with a
    face. `features(crops)` turns a batch into the networks' inputs."""
    dim = net.encoder.audio_dim
    audio, face, n, faces = 0.0, 0.0, 0, 0.0
    was_training = net.training
    net.eval()
    try:
        for crops, _, _ in _plain_batches(dataset, per_class, seed, batch_size, num_workers):
            rows = net.rows(features(crops)).float().cpu()
            flag = rows[:, -1:]
            audio, face = audio + rows[:, :dim].sum(0), face + (rows[:, dim:-1] * flag).sum(0)
            n, faces = n + len(rows), faces + float(flag.sum())
    finally:
        net.train(was_training)
    return (audio / n).numpy(), (face / max(faces, 1.0)).numpy()


def set_mean_classifier(loss, means, counts):
    """The AAM weights of `loss` set to the direction of each class's mean embedding (every sub-centre alike),
    each row keeping the norm of its random initialisation (so the optimiser's step size relative to the
    weights is that of a random start); classes with count 0 keep their random rows (a WARNING counts them)."""
    k = loss.subcenters
    rows = F.normalize(means, dim=1).repeat_interleave(k, dim=0).to(loss.weight.device)
    has = (counts > 0).repeat_interleave(k).to(loss.weight.device)
    with torch.no_grad():
        norms = loss.weight.norm(dim=1, keepdim=True)
        loss.weight.copy_(torch.where(has.unsqueeze(1), rows * norms, loss.weight))
    missing = int((counts == 0).sum())
    if missing:
        log.warning("classifier_init mean: %d of %d classes have no training crop; their rows stay random",
                    missing, len(counts))


def joint_networks(cfg):
    """Fill model.speaker_net and model.face_net of a data.input av config from the model sections of the files
    finetune.speaker_model and finetune.face_model (avtk.embed.read_model_file: a missing or foreign file is
    an AvtkError naming it). A speaker file must hold a speech network, a face file a face network."""
    from avtk.embed import read_model_file
    from avtk.models import modality

    if cfg["data"]["input"] != "av":
        return
    for key, want in (("speaker", "speech"), ("face", "face")):
        path = cfg["finetune"][f"{key}_model"]
        try:
            model = read_model_file(path)["config"]["model"]
        except AvtkError as err:
            raise AvtkError(f"finetune.{key}_model: {err}") from None
        if modality(model["encoder"]) != want:
            kind = modality(model["encoder"])
            raise AvtkError(f"finetune.{key}_model {path}: a{'n' if kind[0] in 'aeiou' else ''} {kind} network "
                            f"({model['encoder']}), not a {want} one")
        cfg["model"][f"{key}_net"] = {k: v for k, v in model.items() if k not in ("speaker_net", "face_net")}


def load_joint_networks(net, cfg):
    """Load the weights of finetune.speaker_model and finetune.face_model into `net.speaker` and `net.face`
    (a JointNet built from a config `joint_networks` filled): misfitting or non-finite weights are an
    AvtkError naming the file (avtk.embed.weights_misfit, check_weights)."""
    from avtk.embed import check_weights, read_model_file, weights_misfit

    for key in ("speaker", "face"):
        path, part = cfg["finetune"][f"{key}_model"], getattr(net, key)
        weights = read_model_file(path)["model"]
        misfit = weights_misfit(part, weights)
        if misfit:
            raise AvtkError(f"finetune.{key}_model {path}: its weights do not fit its own model section: {misfit}")
        part.load_state_dict(weights)
        check_weights(part, path)


def encoder_modules(net):
    """The modules that optim.encoder_lr_scale and finetune.freeze_encoder_epochs act on: the encoder, or the
    speaker and face networks that an audio-visual network fine-tunes (avtk.models.joint.JointNet)."""
    if getattr(net, "speaker", None) is not None:
        return [net.speaker, net.face]
    return [net.encoder]


def param_groups(net, loss, cfg):
    """The optimiser's parameter groups: one group of everything, or, with optim.encoder_lr_scale != 1 or
    finetune.freeze_encoder_epochs > 0, the encoder's parameters (named "encoder"; `encoder_modules`) and the
    rest (front end, classifier, the gate). Each group's lr is the schedule's times `group_lr_scale`."""
    params = list(net.parameters()) + list(loss.parameters())
    if cfg["optim"]["encoder_lr_scale"] == 1 and not cfg["finetune"]["freeze_encoder_epochs"]:
        return params
    encoder = [p for m in encoder_modules(net) for p in m.parameters()]
    ids = {id(p) for p in encoder}
    return [{"params": encoder, "name": "encoder"}, {"params": [p for p in params if id(p) not in ids], "name": "head"}]


def encoder_frozen(cfg, epoch):
    """Whether the encoder is frozen in (1-based) `epoch`."""
    return epoch <= cfg["finetune"]["freeze_encoder_epochs"]


def group_lr_scale(cfg, group, epoch):
    """The factor of the schedule's lr for optimiser group `group` in `epoch`: the encoder's is
    optim.encoder_lr_scale, or 0 while frozen (its weights then stay exactly as they are)."""
    if group.get("name") != "encoder":
        return 1.0
    return 0.0 if encoder_frozen(cfg, epoch) else cfg["optim"]["encoder_lr_scale"]
