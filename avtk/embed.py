"""Embedding extraction: whole utterances, batched by length, equal to one-at-a-time extraction.

Speech: utterances are read in windows, sorted by length inside a window and batched up to `max_frames`
padded frames (on the CPU at most CPU_MAX_FRAMES); the networks mask the padding, so an utterance's
embedding does not depend on its batch. ECAPA-TDNN and iresnet encoders run as their fused inference copies
(prepare_for_inference); bench/extract.py and bench/face_extract.py measure them.
Reading ahead (extract-embeddings --num-workers, validation with data.num_workers): audio is decoded by DataLoader
worker processes (`read_audio`), a feature table read by one thread (`read_ahead`: a table is one stream), up to a
window ahead; the same items in the same order and the same errors as reading in turn, so the same bytes out.
Faces: N evenly spaced frames per utterance; the embedding is the mean of the L2-normalised frame embeddings,
so the dot product of two of them is the mean of the seed's NxN frame cosine matrix.
"""
import copy
import logging
import os
import re

import numpy as np
import torch

from avtk.errors import AvtkError
from avtk.io.atomic import note_input, torch_save

log = logging.getLogger(__name__)
WINDOW = 512  # utterances sorted together
# Padded frames per batch on the CPU, whatever max_frames asks: larger batches measured slower there (their
# activations leave the caches and are page-faulted afresh at every allocation; bench/extract.py).
CPU_MAX_FRAMES = 4000


def batch_frames(max_frames, device):
    """The padded frames per batch `embed` uses: max_frames, at most CPU_MAX_FRAMES on the CPU."""
    return min(max_frames, CPU_MAX_FRAMES) if torch.device(device).type == "cpu" else max_frames


def save_model(path, weights, cfg, speakers, epochs=None):
    """A model file for extraction: a network's state_dict, the resolved config and the training speakers."""
    torch_save({"model": weights, "config": cfg, "speakers": list(speakers), "epochs": epochs}, path)


def read_model_file(path):
    """The dict saved in an avtk model file; anything else is an AvtkError naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AvtkError(f"model file {path} does not exist")
    if os.path.isdir(path):
        raise AvtkError(f"model file {path} is a directory")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch.load raises pickle, zip, EOF and OS errors alike on a foreign file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AvtkError(f"{path}: not an avtk model file (cannot load it: {reason})") from None
    note_input(path)  # an input of the running command: no output may replace it
    if not isinstance(blob, dict) or "model" not in blob or not isinstance(blob.get("config"), dict) \
            or "model" not in blob["config"]:
        raise AvtkError(f"{path}: not an avtk model file (expected the keys 'model' and 'config' that avtk train "
                        "writes; import foreign checkpoints with avtk import-model)")
    return blob


def load_network(path, device="cpu"):
    """(SpeakerNet or FaceNet in eval mode, config, the file's dict) of a model or checkpoint file written by
    avtk train, avtk import-model or avtk verify --set-threshold*."""
    blob = read_model_file(path)
    return network_of(blob["config"], blob["model"], path, device), blob["config"], blob


def network_of(config, weights, path, device="cpu"):
    """The SpeakerNet or FaceNet (eval mode, on `device`) of a resolved config dict whose `model` section names
    the network, holding `weights` (a state_dict). A config that builds no network, weights that do not fit it
    (weights_misfit) or hold NaN or infinite values (check_weights) are an AvtkError naming `path`."""
    from avtk.models import build_network

    try:
        net = build_network(config["model"])
    except AvtkError as err:  # e.g. an unknown encoder: name the file whose config says so
        raise AvtkError(f"{path}: {err}") from None
    except (KeyError, TypeError) as err:
        raise AvtkError(f"{path}: its config has no usable model section ({type(err).__name__}: {err})") from None
    misfit = weights_misfit(net, weights)
    if misfit:
        raise AvtkError(f"{path}: the weights do not fit the network of its config: {misfit}")
    try:
        net.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0]
        raise AvtkError(f"{path}: the weights do not fit the network of its config: {first}") from None
    check_weights(net, path)
    return net.to(device).eval()


def weights_misfit(net, weights, shown=3):
    """"" when `weights` (a state_dict: name -> tensor) has exactly the keys and shapes of `net`'s state_dict,
    else one line naming the missing, unexpected and mis-shaped keys (the first `shown` of each, then a count).
    Not a mapping: says so."""
    if not isinstance(weights, dict):
        return f"the weights are a {type(weights).__name__}, not a mapping of names to tensors"
    target = net.state_dict()
    shape = {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()}
    groups = (("missing", [k for k in target if k not in weights]),
              ("unexpected", [k for k in weights if k not in target]),
              ("mis-shaped", [f"{k} (file {list(shape[k])}, network {list(target[k].shape)})" for k in target
                              if k in weights and shape[k] != tuple(target[k].shape)]))

    def listed(what, keys):
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        return f"{len(keys)} {what} key{'s' if len(keys) > 1 else ''}: {', '.join(keys[:shown])}{more}"

    return "; ".join(listed(what, keys) for what, keys in groups if keys)


def nonfinite(named_tensors):
    """"" when every floating-point tensor of `named_tensors` ((name, tensor) pairs) is finite, else which is
    not: "3 of the 256 values of encoder.conv1.weight" (the first such tensor)."""
    for name, tensor in named_tensors:
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"{int((~torch.isfinite(tensor)).sum())} of the {tensor.numel()} values of {name}"
    return ""


def check_weights(net, path):
    """AvtkError naming the model file and the first parameter or buffer of `net` that holds a NaN or an
    infinity (a diverged training run, a damaged file): such a network embeds nothing usable."""
    bad = nonfinite(list(net.named_parameters()) + list(net.named_buffers()))
    if bad:
        raise AvtkError(f"{path}: the weights hold NaN or infinite values ({bad}): the model is unusable")


def check_outputs(emb, keys):
    """`emb` (n, dim) numpy embeddings of `keys` from a network, unless one holds a NaN or an infinity or is all
    zeros (avtk.scoring.check_embeddings): then an AvtkError naming the first such key."""
    from avtk.scoring import check_embeddings

    check_embeddings(emb, keys, "the network's output")
    return emb


def load_model(path, device="cpu"):
    """(SpeakerNet or FaceNet in eval mode, config) of an avtk model file: load_network without the file's dict.
    (The Python API's avtk.load_model gives a SpeakerModel or FaceModel instead.)"""
    net, cfg, _ = load_network(path, device)
    return net, cfg


def _batches(items, max_frames):
    """Group (key, array) items, sorted by length within windows, into batches of <= max_frames padded frames."""
    window = []
    for item in items:
        window.append(item)
        if len(window) == WINDOW:
            yield from _group(window, max_frames)
            window = []
    yield from _group(window, max_frames)


def _group(window, max_frames):
    window = sorted(window, key=lambda kv: len(kv[1]))
    batch = []
    for key, x in window:
        if batch and len(x) * (len(batch) + 1) > max_frames:
            yield batch
            batch = []
        batch.append((key, x))
    if batch:
        yield batch


def _pad(arrays, pin=False):
    """(float32 (n, longest, ...) tensor of `arrays` zero-padded, int64 (n,) lengths); pin: in pinned memory
    (for a CUDA device: its copy to the device is then one asynchronous DMA, no staging copy)."""
    lengths = torch.tensor([len(a) for a in arrays])
    # An empty item (Kaldi's empty matrix is 0 x 0) takes the others' trailing shape; it stays all padding.
    tail = next((a.shape[1:] for a in arrays if len(a)), arrays[0].shape[1:])
    out = torch.zeros((len(arrays), int(lengths.max())) + tail, dtype=torch.float32, pin_memory=pin)
    view = out.numpy()
    for i, a in enumerate(arrays):
        if len(a):
            view[i, :len(a)] = a
    return out, lengths


def prepare_for_inference(net):
    """The network extraction runs: for a network in eval mode whose encoder is an ECAPA-TDNN or an iresnet, a
    copy with the encoder's inference form (avtk.models.ecapa / avtk.models.iresnet fuse_for_inference: the
    same embeddings within float32 rounding, faster on CPU); for a ResNet or CAM++ encoder, a copy with its
    BatchNorms folded into the convs (avtk.models.fold.fold_batchnorms); any other network (or a network in
    training mode) unchanged. `net` itself is not changed; the copy holds folded copies of its weights, so
    prepare again after they change (`embed` and `embed_faces` prepare on every call)."""
    from avtk.models import campplus, ecapa, eres2net, fold, iresnet, resnet

    fuse = {ecapa.EcapaTdnn: ecapa.fuse_for_inference, iresnet.IResNet: iresnet.fuse_for_inference,
            resnet.ResNet34: fold.fold_batchnorms, resnet.ResNet221: fold.fold_batchnorms,
            resnet.ResNet293: fold.fold_batchnorms, eres2net.ERes2NetV2: fold.fold_batchnorms,
            campplus.CamPlusPlus: fold.fold_batchnorms}.get(type(getattr(net, "encoder", None)))
    if net.training or fuse is None:
        return net
    fast = copy.copy(net)
    fast._modules = {**net._modules, "encoder": fuse(net.encoder)}  # a module table of its own
    return fast


@torch.inference_mode()
def embed(net, items, input_type, device="cpu", max_frames=60000, skipped=None, frame_samples=160, fused=True):
    """Yield (key, embedding np.float32) for (key, array) items; arrays are features (frames, dim) or audio.

    Items that give no frames are not embedded; their keys are appended to `skipped`. fused: run the network
    prepare_for_inference gives (fused=False: `net` as it is; the embeddings agree within 1e-4). An embedding
    that is not finite or all zeros is an AvtkError naming its key (`check_outputs`); the inputs were checked
    where they were read (avtk.io.audio, avtk.io.ark).
    """
    skipped = [] if skipped is None else skipped
    if fused:
        net = prepare_for_inference(net)
    cuda = torch.device(device).type == "cuda"
    for batch in _batches(items, batch_frames(max_frames, device) * (frame_samples if input_type == "wav" else 1)):
        keys = [k for k, _ in batch]
        x, lengths = _pad([a for _, a in batch], pin=cuda)
        x, lengths = x.to(device, non_blocking=cuda), lengths.to(device)
        if input_type == "wav":
            feats, frames = net.features(x, lengths)
        else:
            feats, frames = x, lengths
        ok = (frames > 0).cpu()
        if not ok.all():
            skipped.extend(k for k, good in zip(keys, ok.tolist()) if not good)
            keys = [k for k, good in zip(keys, ok.tolist()) if good]
            if not keys:
                continue
            feats, frames = feats[ok.to(feats.device)], frames[ok.to(frames.device)]
            feats = feats[:, :int(frames.max())]
        emb = check_outputs(net.embed_features(feats, frames).float().cpu().numpy(), keys)
        yield from zip(keys, emb)


@torch.inference_mode()
def embed_faces(net, items, device="cpu", n_frames=5, batch_frames=64, no_face=None, bad=None, fused=True):
    """Yield (utt, embedding) for (utt, frames directory) items: the mean of the L2-normalised embeddings of
    n_frames evenly spaced frames (avtk.face.frames.evenly_spaced). fused: run the network
    prepare_for_inference gives (fused=False: `net` as it is; the embeddings agree within 1e-4).

    Utterances without frames get no embedding and are appended to `no_face`. An unreadable frame (or
    directory) raises AvtkError naming it, unless `bad` is a list: then the utterance is skipped and
    (utt, reason) appended there.
    """
    from avtk.face.frames import evenly_spaced, frame_paths, read_frame

    no_face = [] if no_face is None else no_face
    if fused:
        net = prepare_for_inference(net)
    pending = []

    def flush():
        yield from face_means(net, pending, device)
        pending.clear()

    for utt, frames_dir in items:
        try:
            paths = evenly_spaced(frame_paths(utt, frames_dir), n_frames)
            if not paths:
                no_face.append(utt)
                continue
            images = np.stack([read_frame(utt, p, net.input_size) for p in paths])
        except AvtkError as err:
            if bad is None:
                raise
            bad.append((utt, str(err)))
            continue
        pending.append((utt, images))
        if sum(len(i) for _, i in pending) >= batch_frames:
            yield from flush()
    if pending:
        yield from flush()


@torch.inference_mode()
def face_means(net, groups, device="cpu"):
    """[(label, embedding float32 (dim,))] of `groups`, a list of (label, uint8 RGB images (n, H, W, 3)) run
    through a face network as one batch: each group's embedding is the mean of its images' L2-normalised
    embeddings (the seed's test-time face embedding; the dot product of two is their mean frame cosine). An
    image embedding that is not finite or all zeros is an AvtkError naming its label (`check_outputs`)."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.concatenate([np.ascontiguousarray(images) for _, images in groups])).to(device)
    raw = net(x).float()
    check_outputs(raw.cpu().numpy(), [label for label, images in groups for _ in images])
    emb = F.normalize(raw, dim=1).cpu().numpy()
    out, start = [], 0
    for label, images in groups:
        out.append((label, emb[start:start + len(images)].mean(0)))
        start += len(images)
    return out


def crops(x, n, length):
    """`n` evenly spaced `length`-long crops of x along axis 0 (wrap-padded first if x is shorter), the
    seed's test-time crops: starts at linspace(0, len - length, n)."""
    if len(x) < length:
        x = np.pad(x, [(0, length - len(x))] + [(0, 0)] * (x.ndim - 1), mode="wrap")
    starts = np.linspace(0, len(x) - length, n).astype(np.int64)
    return [x[s:s + length] for s in starts]


def embed_with_crops(net, items, input_type, device, max_frames, skipped, n_crops, crop_len):
    """Yield (key, (1 + n_crops, dim) matrix): the whole-utterance embedding, then one per crop. An item of
    no frames has no crops: `embed` skips it (its (key, 0) appended to `skipped`), as without crops."""
    parts = {}

    def expanded():
        for key, x in items:
            parts[key] = []
            yield (key, 0), x
            for i, c in enumerate(crops(x, n_crops, crop_len) if len(x) else [], 1):
                yield (key, i), c

    for (key, i), e in embed(net, expanded(), input_type, device, max_frames, skipped):
        parts[key].append((i, e))
        if len(parts[key]) == 1 + n_crops:
            yield key, np.stack([e for _, e in sorted(parts.pop(key), key=lambda p: p[0])])


# ----------------------------------------------------------------------------- reading ahead of the network

def read_ahead(items, depth=WINDOW):
    """Iterate `items` (any iterable, e.g. an avtk.io.ark table reader) as one background thread reads them, at
    most `depth` items ahead: a table read as one stream (an ark, an scp read in order, a pipe, stdin) is read
    while the network computes, by its one reader. The same items in the same order; an exception of the reader
    is raised here, after the items before it, where the serial loop would have raised it. When the consumer
    stops early the thread stops and closes the reader (a generator's `finally` runs: pipes are ended)."""
    import queue
    import threading

    ahead, stop, end = queue.Queue(depth), threading.Event(), object()

    def put(entry):
        while not stop.is_set():
            try:
                ahead.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def read():
        it = iter(items)
        try:
            for item in it:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as err:  # handed to the consumer, raised there
            put((end, err))
        finally:
            getattr(it, "close", lambda: None)()

    thread = threading.Thread(target=read, name="avtk-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, err = ahead.get()
            if item is end:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)  # a reader blocked on a stream that never ends is left to the daemon thread


class AudioGroups(torch.utils.data.Dataset):
    """The utterances of an avtk.io.audio.AudioReader, in its order (or its `utts`, in theirs), as a map-style
    dataset for DataLoader workers. Item i: the list of (utt, float32 samples) of the i-th run of consecutive utterances that share a
    recording (read once, as the reader does: `AudioReader.items`), with the reader's checks (missing, truncated
    or corrupt file, failing pipe, non-finite samples, rate, segment); or, for a run with an unreadable
    utterance, an avtk.train.data.Failed holding that utterance's AvtkError line (a worker's exception would
    carry its traceback)."""

    def __init__(self, reader, utts=None):
        self.reader = reader
        self.groups, last = [], None
        for utt in reader.utts if utts is None else utts:
            location = reader.sources[utt].location
            if self.groups and location == last:
                self.groups[-1].append(utt)
            else:
                self.groups.append([utt])
            last = location

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, i):
        from avtk.train.data import Failed

        try:
            return list(self.reader.items(self.groups[i]))
        except AvtkError as err:
            return Failed(str(err))


def _as_is(item):
    return item  # numpy arrays travel pickled: tensors would hold a file descriptor each (WINDOW of them)


def read_audio(reader, num_workers=0, utts=None):
    """Iterate (utt, float32 samples) over an avtk.io.audio.AudioReader in its order (or over its `utts`, in
    that order): read by the reader in this process (num_workers 0), or `num_workers` DataLoader worker processes decoding up to WINDOW utterances
    ahead of the consumer (`embed` sorts a window at a time, so that much lets reading overlap the network).
    The same items in the same order; an unreadable utterance is the AvtkError (one line, naming it) that the
    reader gives, raised when its turn comes."""
    if num_workers == 0:
        return reader.items(reader.utts if utts is None else utts)
    loader = torch.utils.data.DataLoader(
        AudioGroups(reader, utts), batch_size=None, collate_fn=_as_is, num_workers=num_workers,
        prefetch_factor=max(2, -(-WINDOW // num_workers)), persistent_workers=False)
    return _unpacked(loader)


def _unpacked(loader):
    from avtk.train.data import Failed

    for group in loader:
        if isinstance(group, Failed):
            raise AvtkError(group.message)
        yield from group


def check_feature_dim(net, dim, where):
    want = net.feature_dim
    if want is not None and dim != want:
        raise AvtkError(f"{where}: features have {dim} dimensions but the model expects {want}")


# A Kaldi ark offset, `file.ark:1234` (optionally `[rows]` / `[rows,cols]` ranges after it).
_ARK_OFFSET = re.compile(r"(?P<path>.+):(?P<offset>\d+)(?:\[[^\]]*\])?")
_KALDI_HEADS = (b"\0B", b"[", b" [")  # a Kaldi binary matrix/vector, or a text one
_CONTENT = {
    "feats": "a feature table (it points into Kaldi arks)",
    "wav": "an audio list (audio files or command pipes)",
    "frames": "a frames.scp (directories of face images)",
    "ark-audio": "audio stored inside a Kaldi ark",
}


def scp_value_kind(value):
    """What one scp value (the text after the key) points at, from the value and the bytes it names:
    'feats' (a Kaldi `file:offset`, or a file that starts as a Kaldi matrix), 'ark-audio' (a `file:offset` at
    a RIFF wave, as Kaldi's wav-copy writes), 'frames' (a directory) or 'wav' (a command pipe `... |`, or any
    other file: wav, flac, m4a, ...). A `file:offset` whose file is missing counts as 'feats' (its reader then
    names the missing file)."""
    value = value.strip()
    if value.endswith("|"):
        return "wav"
    match = _ARK_OFFSET.fullmatch(value)
    if match and not os.path.exists(value):
        try:
            with open(match["path"], "rb") as f:
                f.seek(int(match["offset"]))
                return "ark-audio" if f.read(4) == b"RIFF" else "feats"
        except OSError:
            return "feats"
    if os.path.isdir(value):
        return "frames"
    try:
        with open(value, "rb") as f:
            head = f.read(2)
    except OSError:
        return "wav"  # the audio reader names the unreadable file and its utterance
    return "feats" if head.startswith(_KALDI_HEADS) else "wav"


def input_type(rspecifier, model_cfg, model_path, requested="auto"):
    """The input ('feats', 'wav' or 'frames') an rspecifier gives a model, decided from its content, never
    from file names: the first entry of an scp (`scp_value_kind`), an ark of matrices ('feats'), and the
    model's modality (a face network embeds frames, a speaker network features or audio, its front end being
    in the graph). `requested` ('auto', or what --input-type names) must agree with the content.

    Raises AvtkError naming the model, the table, its first entry and the mismatch: a face network given a
    feature table or audio list, a speaker network given frame directories, audio inside an ark, or a
    --input-type the content (or the model) contradicts. A stream (`scp:-`, a pipe) or an empty table is
    taken as `requested` says, or as the model's usual input (frames; feats).
    """
    from avtk.data.table import numbered_fields
    from avtk.io.ark import parse_specifier
    from avtk.models import modality

    ark, scp, _ = parse_specifier(rspecifier, "rspecifier")
    encoder = model_cfg["model"]["encoder"]
    face = modality(encoder) == "face"
    kind, entry = None, ""
    if scp is None:
        kind, entry = "feats", f"{rspecifier} is an ark"
    elif scp != "-" and not scp.endswith("|"):  # a stream cannot be looked at without consuming it
        first = next(iter(numbered_fields(scp, "table ")), None)
        if first is not None:  # an empty table (an empty split) has nothing to contradict
            lineno, fields, text = first
            value = text.split(maxsplit=1)[1] if len(fields) > 1 else ""
            kind = scp_value_kind(value)
            entry = f"{scp} is {_CONTENT[kind]}: line {lineno}, utterance {fields[0]} -> {value}"
    if kind == "ark-audio":
        raise AvtkError(f"{entry}: avtk reads audio from files or pipes; list the wav files, or a pipe such as "
                        "`wav-copy ARK:OFFSET - |`")
    if kind is not None and face != (kind == "frames"):
        if face:
            raise AvtkError(f"model {model_path} is a face network ({encoder}) but {entry}; a face network embeds "
                            "a frames.scp (utterance -> directory of aligned face images)")
        raise AvtkError(f"model {model_path} is a speaker network ({encoder}) but {entry}; a speaker network "
                        "embeds a feats.scp or a wav.scp")
    if requested not in ("auto", None):
        if kind is not None and requested != kind:
            raise AvtkError(f"--input-type {requested} but {entry}")
        if face != (requested == "frames"):
            raise AvtkError(f"model {model_path} is a {'face' if face else 'speaker'} network ({encoder}) and "
                            f"cannot embed {requested} ({rspecifier})")
        return requested
    return kind or ("frames" if face else "feats")


def read_items(data_or_scp, input_type, keys=None, num_workers=0):
    """(key, array) items of a data dir's feats.scp or wav.scp (only `keys` if given), in sorted key order.
    The table's first entry must hold what `input_type` says (`scp_value_kind`), else AvtkError naming it.
    num_workers > 0: audio is decoded by that many loader workers (`read_audio`), features read by one thread
    (`read_ahead`); the same items.

    Returns (items generator, skipped list): empty utterances are left out and listed there.
    """
    import kaldiio

    from avtk.data.table import read_dict
    from avtk.io.ark import check_finite_value
    from avtk.io.audio import AudioReader

    if input_type == "feats":
        table = read_dict(os.path.join(data_or_scp, "feats.scp"))
    else:
        reader = AudioReader(data_or_scp)
        table = reader.sources
    if table:
        key = next(iter(table))
        value = table[key] if input_type == "feats" else table[key].location
        found = scp_value_kind(value)
        if found != input_type:
            where = os.path.join(data_or_scp, "feats.scp") if input_type == "feats" else data_or_scp
            raise AvtkError(f"{where}: utterance {key} -> {value} is {_CONTENT[found]}, not {_CONTENT[input_type]} "
                            f"as input {input_type} needs")
    wanted = sorted(table) if keys is None else sorted(keys)
    missing = [k for k in wanted if k not in table]
    if missing:
        raise AvtkError(f"{data_or_scp}: no {input_type} for {len(missing)} utterances, e.g. {missing[0]}")
    if input_type == "wav":  # audio is never empty: the reader refuses a file or segment without samples
        return read_audio(reader, num_workers, wanted), []
    skipped = []

    def gen():
        for k in wanted:
            x = check_finite_value(np.asarray(kaldiio.load_mat(table[k]), np.float32),
                                   f"{os.path.join(data_or_scp, 'feats.scp')}: utterance {k!r}")
            if len(x) == 0:
                skipped.append(k)
                continue
            yield k, x

    return (read_ahead(gen()) if num_workers else gen()), skipped


def validation_eer(net, data_dir, trials_path, input_type, device, max_frames, face_frames=5, num_workers=0):
    """EER (%) of cosine scoring on a trials file, embedding its utterances from data_dir (read ahead of the
    network by `num_workers` loader workers: `read_items`)."""
    from avtk.data.trials import read_trials
    from avtk.metrics import eer
    from avtk.scoring import cosine_scores

    trials = read_trials(trials_path)
    if trials.labels is None:
        raise AvtkError(f"{trials_path}: validation trials need target/nontarget labels")
    keys = set(trials.enroll) | set(trials.test)
    was_training = net.training
    net.eval()
    if input_type == "frames":
        from avtk.data.table import read_dict

        dirs = read_dict(os.path.join(data_dir, "frames.scp"))
        missing = sorted(keys - set(dirs))
        if missing:
            raise AvtkError(f"{data_dir}/frames.scp: no frames for {len(missing)} trial utterances, e.g. {missing[0]}")
        table = dict(embed_faces(net, ((k, dirs[k]) for k in sorted(keys)), device, face_frames, no_face=[]))
    else:
        items, skipped = read_items(data_dir, input_type, keys, num_workers)
        table = dict(embed(net, items, input_type, device, max_frames, skipped))
    net.train(was_training)
    return 100.0 * eer(cosine_scores(table, trials, where=trials_path), trials.labels)[0]
