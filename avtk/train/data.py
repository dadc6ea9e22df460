"""Training data: random fixed-length crops of features (feats.scp) or audio (wav.scp), or one random face
frame per utterance (frames.scp), sharded per rank.

Every random choice for a sample comes from a generator seeded by (seed, epoch, index), so the data of an
epoch is the same whatever the number of workers, and a resumed run sees exactly what it would have seen.
"""
import logging
import os

import kaldiio
import numpy as np
import torch

from avtk.data.table import read_dict
from avtk.errors import AvtkError
from avtk.io.audio import load_audio, read_wav_scp

log = logging.getLogger(__name__)


def wrap_crop(x, length, rng):
    """A random `length`-long crop along axis 0; a shorter x is wrap-padded (repeated) to length."""
    n = x.shape[0]
    if n < length:
        x = np.pad(x, [(0, length - n)] + [(0, 0)] * (x.ndim - 1), mode="wrap")
        return x
    start = int(rng.integers(0, n - length + 1))
    return x[start:start + length]


class CropDataset(torch.utils.data.Dataset):
    """Items (index, epoch) -> (crop float32, label). Crops are (frames, dim) features or (samples,) audio."""

    def __init__(self, data_dir, cfg, seed, augment=None, spec_augment=False):
        self.data_dir = data_dir
        self.input = cfg["data"]["input"]
        self.seed = seed
        self.augment = augment
        self.spec_augment = spec_augment
        utt2spk = read_dict(os.path.join(data_dir, "utt2spk"))
        self.speakers = sorted(set(utt2spk.values()))
        spk_index = {s: i for i, s in enumerate(self.speakers)}
        if self.input == "feats":
            feats = read_dict(os.path.join(data_dir, "feats.scp")) if os.path.exists(os.path.join(data_dir, "feats.scp")) else None
            if feats is None:
                raise AvtkError(f"{data_dir}/feats.scp: missing (data.input is feats; run compute-fbank first)")
            self.sources = feats
            num_frames = self._num_frames(data_dir, feats)
            self.crop = int(round(cfg["data"]["crop_seconds"] * 1000.0 / cfg["data"]["frame_shift_ms"]))
        else:
            self.sources = read_wav_scp(data_dir)
            num_frames = {u: 1 for u in self.sources}  # lengths are checked when read
            # frames of a crop: the seed's 2 s = 32000 samples + 240, so a 25 ms window fits 200 hops
            self.crop = int(round(cfg["data"]["crop_seconds"] * 16000)) + 240
        empty = sorted(u for u in utt2spk if num_frames.get(u, 0) == 0 and u in self.sources)
        missing = sorted(u for u in utt2spk if u not in self.sources)
        if missing:
            raise AvtkError(f"{data_dir}: {len(missing)} utterances of utt2spk have no {self.input} entry, e.g. {missing[0]}")
        if empty:
            log.warning("%s: skipping %d utterances with no frames, e.g. %s", data_dir, len(empty), empty[0])
        skip = set(empty)
        self.utts = [u for u in sorted(utt2spk) if u not in skip]
        self.labels = np.array([spk_index[utt2spk[u]] for u in self.utts], dtype=np.int64)
        self.skipped = len(empty)

    @staticmethod
    def _num_frames(data_dir, feats):
        path = os.path.join(data_dir, "utt2num_frames")
        if os.path.exists(path):
            return {u: int(n) for u, n in read_dict(path).items()}
        return {u: kaldiio.load_mat(feats[u]).shape[0] for u in feats}

    def __len__(self):
        return len(self.utts)

    def feature_dim(self):
        if self.input != "feats":
            return None
        return kaldiio.load_mat(self.sources[self.utts[0]]).shape[1]

    def __getitem__(self, item):
        index, epoch = item
        rng = np.random.default_rng([self.seed, epoch, index])
        utt = self.utts[index]
        if self.input == "feats":
            try:
                x = kaldiio.load_mat(self.sources[utt])
            except Exception as err:  # kaldiio raises assorted errors on bad arks
                raise AvtkError(f"utterance {utt}: cannot read features {self.sources[utt]}: {err}") from None
            x = wrap_crop(np.asarray(x, np.float32), self.crop, rng)
        else:
            x = wrap_crop(load_audio(utt, self.sources[utt]), self.crop, rng)
            if self.augment is not None:
                x = self.augment(x, rng)
        return torch.from_numpy(np.array(x, dtype=np.float32)), int(self.labels[index]), index


class FrameDataset(torch.utils.data.Dataset):
    """Items (index, epoch) -> (one random augmented face frame, uint8 RGB (H, W, 3), label, index).

    Utterances without frames are skipped with a warning and counted; an unreadable frame is an error
    naming the file."""

    def __init__(self, data_dir, cfg, seed, size):
        from avtk.face.frames import frame_paths

        self.data_dir, self.seed, self.size = data_dir, seed, size
        self.probs = {k: cfg["augment"][f"face_{k}"] for k in ("flip", "blur", "grey")}
        utt2spk = read_dict(os.path.join(data_dir, "utt2spk"))
        path = os.path.join(data_dir, "frames.scp")
        if not os.path.exists(path):
            raise AvtkError(f"{path}: missing (data.input is frames; build it with avtk extract-face-frames)")
        dirs = read_dict(path)
        missing = sorted(u for u in utt2spk if u not in dirs)
        if missing:
            raise AvtkError(f"{data_dir}: {len(missing)} utterances of utt2spk have no frames.scp entry, e.g. {missing[0]}")
        self.speakers = sorted(set(utt2spk.values()))
        spk_index = {s: i for i, s in enumerate(self.speakers)}
        frames = {u: frame_paths(u, dirs[u]) for u in sorted(utt2spk)}
        empty = [u for u, f in frames.items() if not f]
        if empty:
            log.warning("%s: skipping %d utterances with no face frames, e.g. %s", data_dir, len(empty), empty[0])
        self.utts = [u for u in frames if frames[u]]
        self.frames = [frames[u] for u in self.utts]
        self.labels = np.array([spk_index[utt2spk[u]] for u in self.utts], dtype=np.int64)
        self.skipped = len(empty)

    def __len__(self):
        return len(self.utts)

    def feature_dim(self):
        return None

    def __getitem__(self, item):
        from avtk.face.frames import augment_face, read_frame

        index, epoch = item
        rng = np.random.default_rng([self.seed, epoch, index])
        paths = self.frames[index]
        image = read_frame(self.utts[index], paths[int(rng.integers(len(paths)))], self.size)
        image = augment_face(image, rng, **self.probs)
        return torch.from_numpy(image), int(self.labels[index]), index


def make_dataset(data_dir, cfg, seed, augment=None, image_size=None):
    """The training set of data.input: frames (face), feats or wav (speech)."""
    if cfg["data"]["input"] == "frames":
        return FrameDataset(data_dir, cfg, seed, image_size)
    return CropDataset(data_dir, cfg, seed, augment=augment)


class ShardedBatches:
    """Per-epoch shuffled batches of (index, epoch) for one DDP rank; every rank gets the same count."""

    def __init__(self, n, batch_size, rank, world, seed):
        if batch_size % world:
            raise AvtkError(f"data.batch_size {batch_size} is not divisible by the {world} DDP ranks")
        self.n, self.per_rank, self.rank, self.world, self.seed = n, batch_size // world, rank, world, seed
        self.epoch = 1
        if self.steps() == 0:
            raise AvtkError(f"{n} training utterances make no full batch of {batch_size}")

    def steps(self):
        return self.n // (self.per_rank * self.world)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.steps()

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n)
        for step in range(self.steps()):
            batch = order[step * self.per_rank * self.world:(step + 1) * self.per_rank * self.world]
            yield [(int(i), self.epoch) for i in batch[self.rank::self.world]]

    def state_dict(self):
        return {"epoch": self.epoch, "seed": self.seed, "n": self.n}


def collate(items):
    crops, labels, index = zip(*items)
    return torch.stack(crops), torch.tensor(labels), torch.tensor(index)
