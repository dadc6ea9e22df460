"""Training data: random fixed-length crops of features (feats.scp) or audio (wav.scp), one random face
frame per utterance (frames.scp), or embeddings of both modalities (audio_emb.scp, face_emb.scp), sharded per
rank.

Every random choice for a sample comes from a generator seeded by (seed, epoch, index), so the data of an
epoch is the same whatever the number of workers, and a resumed run sees exactly what it would have seen.
"""
import logging
import os
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import kaldiio
import numpy as np
import torch

from avtk.data import datadir
from avtk.errors import AvtkError
from avtk.features.fbank import num_frames as fbank_frames
from avtk.io.ark import check_finite_value
from avtk.io.audio import SAMPLE_RATE, AudioSource, file_info, is_media, load_audio, read_wav_scp

log = logging.getLogger(__name__)


def wrap_crop(x, length, rng):
    """A random `length`-long crop along axis 0; a shorter x is wrap-padded (repeated) to length."""
    n = x.shape[0]
    if n < length:
        x = np.pad(x, [(0, length - n)] + [(0, 0)] * (x.ndim - 1), mode="wrap")
        return x
    start = int(rng.integers(0, n - length + 1))
    return x[start:start + length]


def too_short(seconds, frames, min_seconds):
    """Whether an utterance of `seconds` that gives `frames` front-end frames is too short to train on. The rule
    of compute-fbank (an utterance without one frame has no features: skipped), and data.min_seconds: a crop
    wrap-padded from less is mostly repeats."""
    return frames < 1 or seconds < min_seconds - 1e-9


class Failed(NamedTuple):
    """What __getitem__ returns instead of a sample it cannot read, so that the message reaches the training
    loop as one line also from a DataLoader worker (an exception raised there carries its traceback)."""
    message: str


def _speakers(dd):
    """(utt2spk, sorted speakers) of a loaded data dir; fewer than two speakers is an AvtkError."""
    utt2spk = dd.utt2spk
    speakers = sorted(set(utt2spk.values()))
    if len(speakers) < 2:
        what = "no utterances" if not utt2spk else f"one speaker ({speakers[0]})"
        raise AvtkError(f"{dd.file('utt2spk')}: {what}; training classifies at least 2 speakers")
    return utt2spk, speakers


def _require(dd, name, utt2spk, why):
    """{utt: value} of the per-utterance table `name`; an AvtkError when it is absent or misses an utterance."""
    table = dd.table(name)
    if table is None:
        raise AvtkError(f"{dd.file(name)}: missing ({why})")
    missing = sorted(u for u in utt2spk if u not in table)
    if missing:
        raise AvtkError(f"{dd.file(name)}: no entry for {len(missing)} utterances of utt2spk, e.g. {missing[0]}")
    return table


class Strings(Sequence):
    """A read-only list of many str held as one numpy array of UTF-8 bytes: reading an item makes a new str,
    so a forked data-loader worker writes no shared object's reference count (a list or dict of a million
    str is copied page by page into every worker that reads it: about 200-400 bytes per utterance each).
    `find(key)` is the position of key in a sorted Strings (code-point order, as sorted() gives), or -1."""

    def __init__(self, items):
        self.data = np.array([s.encode("utf-8") for s in items], dtype=bytes)
        self._last = (None, -1)  # the last key found: tables sharing these keys look one item up in turn

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [x.decode("utf-8") for x in self.data[i]]
        return self.data[i].decode("utf-8")

    def find(self, key):
        if key == self._last[0]:
            return self._last[1]
        k = key.encode("utf-8")
        i = int(np.searchsorted(self.data, k))
        i = i if i < len(self.data) and self.data[i] == k else -1
        self._last = (key, i)
        return i


class PackedTable(Mapping):
    """A read-only {key: value} over the keys of a sorted `Strings` (shared by the tables of one dataset) that
    are in `table`, held in numpy arrays (see `Strings`): values are str, int, or AudioSource (location,
    recording, segment)."""

    def __init__(self, table, keys):
        self.keys_ = keys
        self.present = np.array([k in table for k in keys], bool)
        values = [table.get(k) for k in keys]
        kinds = {type(v) for v in values if v is not None}
        if kinds == {AudioSource}:
            self.kind = "audio"
            empty = AudioSource("", "")
            values = [v or empty for v in values]
            self.cols = (Strings([v.location for v in values]), Strings([v.reco for v in values]),
                         np.array([v.segment or (np.nan, np.nan) for v in values], np.float64).reshape(-1, 2))
        elif kinds and all(issubclass(t, (int, np.integer)) for t in kinds):
            self.kind, self.cols = "int", np.array([0 if v is None else v for v in values], np.int64)
        else:
            self.kind, self.cols = "str", Strings(["" if v is None else v for v in values])

    def __getitem__(self, key):
        i = self.keys_.find(key)
        if i < 0 or not self.present[i]:
            raise KeyError(key)
        if self.kind == "audio":
            start, end = self.cols[2][i]
            return AudioSource(self.cols[0][i], self.cols[1][i],
                               None if np.isnan(start) else (float(start), float(end)))
        return int(self.cols[i]) if self.kind == "int" else self.cols[i]

    def __iter__(self):
        return (k for k, p in zip(self.keys_, self.present) if p)

    def __len__(self):
        return int(self.present.sum())


class CropDataset(torch.utils.data.Dataset):
    """Items (index, epoch) -> (crop float32, label, index). Crops are (frames, dim) features or (samples,) audio.

    The data dir is read by avtk.data.datadir.load (malformed lines, non-integer frame counts and durations are
    errors naming file:line). Lengths come from utt2num_frames (feats; else from the matrices) or utt2dur
    (wav; else segments, else the audio); an utterance `too_short` is skipped: `skipped` lists them. A length
    that disagrees with the data (a stale utt2num_frames) and features of another dimension than the first
    utterance's are errors naming the utterance."""

    def __init__(self, data_dir, cfg, seed, augment=None, frames_of=None):
        with datadir.gc_paused(freeze=True):  # a million utterances: see gc_paused
            self._build(data_dir, cfg, seed, augment, frames_of)

    def _build(self, data_dir, cfg, seed, augment, frames_of):
        self.data_dir = os.fspath(data_dir)
        self.input = cfg["data"]["input"]
        self.seed = seed
        self.augment = augment
        self.speeds = tuple(cfg["augment"]["speed_perturb"] or ()) if self.input == "wav" else ()
        dd = datadir.load(data_dir)
        utt2spk, self.speakers = _speakers(dd)
        spk_index = {s: i for i, s in enumerate(self.speakers)}
        min_seconds = cfg["data"]["min_seconds"]
        if self.input == "feats":
            self.sources = _require(dd, "feats.scp", utt2spk, "data.input is feats; run compute-fbank first")
            self.where = {u: f"{dd.file('feats.scp')}:{e.lineno}" for u, e in dd.tables["feats.scp"].items()}
            self.shift = cfg["data"]["frame_shift_ms"] / 1000.0
            self.claimed = self._num_frames(dd, utt2spk, min_seconds)
            lengths = {u: (n * self.shift, n) for u, n in self.claimed.items()}
            self.crop = int(round(cfg["data"]["crop_seconds"] / self.shift))
        else:
            sources = read_wav_scp(data_dir)
            missing = sorted(u for u in utt2spk if u not in sources)
            if missing:
                raise AvtkError(f"{dd.file('wav.scp')}: no audio for {len(missing)} utterances of utt2spk, "
                                f"e.g. {missing[0]}")
            self.sources = sources
            lengths = self._durations(dd, utt2spk, frames_of or fbank_frames)
            # samples of a crop: the seed's 2 s = 32000 samples + 240, so a 25 ms window fits 200 hops
            self.crop = int(round(cfg["data"]["crop_seconds"] * SAMPLE_RATE)) + 240
        self.skipped = sorted(u for u in utt2spk if too_short(*lengths[u], min_seconds))
        self.skip_reason = f"shorter than data.min_seconds = {min_seconds:g} s or without a frame"
        skipped = set(self.skipped)
        self.utts = [u for u in sorted(utt2spk) if u not in skipped]
        if not self.utts:
            raise AvtkError(f"{data_dir}: all {len(utt2spk)} utterances are {self.skip_reason}")
        self.labels = np.array([spk_index[utt2spk[u]] for u in self.utts], dtype=np.int64)
        self.dim = self._load(self.utts[0], check=False).shape[1] if self.input == "feats" else None
        # per-utterance data in numpy arrays: workers read it without copying it (`Strings`)
        keys = Strings(self.utts)
        self.sources = PackedTable(self.sources, keys)
        self.claimed = PackedTable(self.claimed, keys)
        if self.input == "feats":
            self.where = PackedTable(self.where, keys)
        self.utts = keys

    def _num_frames(self, dd, utt2spk, min_seconds):
        """{utt: frames}: utt2num_frames, where the few that claim too few frames are checked against the
        matrices (stale lengths would skip utterances that have frames); without it, every matrix is read."""
        if not dd.has("utt2num_frames"):
            log.info("%s: no utt2num_frames; reading every feature matrix for its length", self.data_dir)
            return {u: self._load(u, check=False).shape[0] for u in sorted(utt2spk)}
        _require(dd, "utt2num_frames", utt2spk, "")
        table = dd.utt2num_frames  # built once: the property builds a new dict on every use
        claimed = {u: table[u] for u in utt2spk}
        for u in sorted(utt2spk):  # an utterance is never skipped on a stale claim: its matrix must agree
            if too_short(claimed[u] * self.shift, claimed[u], min_seconds):
                self._load(u, check=False, claimed=claimed[u])
        return claimed

    def _durations(self, dd, utt2spk, frames_of):
        """{utt: (seconds, front-end frames)} from utt2dur, else segments, else the audio itself."""
        self.claimed = {}  # samples utt2dur claims, checked when read
        if dd.has("utt2dur"):
            _require(dd, "utt2dur", utt2spk, "")
            table = dd.utt2dur  # built once: the property builds a new dict on every use
            seconds = {u: table[u] for u in utt2spk}
            self.claimed = {u: int(round(s * SAMPLE_RATE)) for u, s in seconds.items()}
        elif dd.has("segments"):
            seconds = {u: s.end - s.start for u, s in dd.segments.items() if u in utt2spk}
        else:
            seconds = self._recording_seconds(sorted(utt2spk))
        return {u: (s, int(frames_of(int(round(s * SAMPLE_RATE))))) for u, s in seconds.items()}

    def _recording_seconds(self, utts):
        """{utt: seconds} without utt2dur or segments: a plain file's length from its header (`file_info`);
        pipes and media files (m4a, ...) are decoded, and counted in the log."""
        seconds, decoded = {}, 0
        for u in utts:
            source = self.sources[u]
            if source.is_pipe or is_media(source.location):
                seconds[u] = len(load_audio(u, source)) / SAMPLE_RATE
                decoded += 1
            else:
                frames, rate = file_info(source.location, u)
                seconds[u] = frames / rate
        log.info("%s: no utt2dur; lengths of %d recordings read from their headers, %d decoded (pipes, media "
                 "files; write utt2dur to skip this)", self.data_dir, len(utts) - decoded, decoded)
        return seconds

    def _load(self, utt, check=True, claimed=None):
        """The (frames, dim) float32 features of utt. An unreadable entry, another dimension than the first
        utterance's, or another length than utt2num_frames claims (`claimed`) is an AvtkError naming it."""
        try:
            x = kaldiio.load_mat(self.sources[utt])
        except Exception as err:  # kaldiio raises assorted errors on bad arks
            raise AvtkError(f"utterance {utt} ({self.where[utt]}): cannot read features {self.sources[utt]}: "
                            f"{getattr(err, 'strerror', None) or err}") from None
        check_finite_value(x, f"utterance {utt} ({self.where[utt]}): features {self.sources[utt]}")
        x = np.asarray(x, np.float32)
        if x.ndim != 2:
            raise AvtkError(f"utterance {utt} ({self.where[utt]}): features of shape {x.shape}, not (frames, dim)")
        if check and x.shape[1] != self.dim:  # self.dim: of the first utterance
            raise AvtkError(f"utterance {utt} ({self.where[utt]}): {x.shape[1]}-dimensional features, but "
                            f"{self.utts[0]} has {self.dim}: features of mixed dimension")
        claimed = self.claimed.get(utt) if claimed is None and check else claimed
        if claimed is not None and x.shape[0] != claimed:
            raise AvtkError(f"utterance {utt}: {self.data_dir}/utt2num_frames says {claimed} frames but "
                            f"{self.where[utt]} has {x.shape[0]}: utt2num_frames is stale (write it again with "
                            "compute-fbank --write-num-frames, or remove it)")
        return x

    def __len__(self):
        return len(self.utts)

    def feature_dim(self):
        return self.dim

    def __getitem__(self, item):
        """(crop float32, label, index) of item (index, epoch); a Failed for an unreadable utterance. With
        augment.speed_perturb (wav input), the speed index k is drawn first, the crop played at speeds[k]
        (avtk.augment.speed_crop, before the wave augmentation) and the label is speaker + len(speakers)·k
        (avtk.augment.speed_speakers names these classes)."""
        return self.sample(*item)

    def sample(self, index, epoch, speed=None, augment=True):
        """__getitem__((index, epoch)), or with `speed` the speed index k given (the draw of k still made, so the
        crop is the same) and with augment=False without the wave augmentation."""
        rng = np.random.default_rng([self.seed, epoch, index])
        utt = self.utts[index]
        label = int(self.labels[index])
        try:
            if self.input == "feats":
                x = wrap_crop(self._load(utt), self.crop, rng)
            else:
                wave = load_audio(utt, self.sources[utt])
                if utt in self.claimed and abs(len(wave) - self.claimed[utt]) > 0.02 * SAMPLE_RATE:  # 2 decimals
                    raise AvtkError(f"utterance {utt}: {self.data_dir}/utt2dur says {self.claimed[utt] / SAMPLE_RATE:g} s "
                                    f"but its audio holds {len(wave) / SAMPLE_RATE:g} s: utt2dur is stale")
                if self.speeds:
                    from avtk.augment import speed_crop

                    k = int(rng.integers(len(self.speeds)))
                    k = k if speed is None else speed
                    label += len(self.speakers) * k
                    x = speed_crop(wave, self.crop, self.speeds[k], rng)
                else:
                    x = wrap_crop(wave, self.crop, rng)
                if self.augment is not None and augment:
                    x = self.augment(x, rng)
        except AvtkError as err:
            return Failed(str(err))
        return torch.from_numpy(np.array(x, dtype=np.float32)), label, index


class FrameDataset(torch.utils.data.Dataset):
    """Items (index, epoch) -> (one random augmented face frame, uint8 RGB (H, W, 3), label, index).

    Utterances without frames are skipped (`skipped` lists them); an unreadable frame is an error naming the
    file. The index is compact (VoxCeleb2 has tens of millions of frames, a Path each was ~5 GB per rank): per
    utterance its frames.scp directory (the table's own string) and its sorted frame names joined by NULs
    in one str, listed by one os.scandir at start-up (frames.scp does not say which directories are empty)."""

    def __init__(self, data_dir, cfg, seed, size):
        from avtk.face.frames import frame_names

        self.data_dir, self.seed, self.size = data_dir, seed, size
        self.probs = {k: cfg["augment"][f"face_{k}"] for k in ("flip", "blur", "grey")}
        dd = datadir.load(data_dir)
        utt2spk, self.speakers = _speakers(dd)
        dirs = _require(dd, "frames.scp", utt2spk, "data.input is frames; build it with avtk extract-face-frames")
        spk_index = {s: i for i, s in enumerate(self.speakers)}
        self.skipped, self.utts, self.dirs, self.names = [], [], [], []
        for u in sorted(utt2spk):
            names = frame_names(u, dirs[u])
            if not names:
                self.skipped.append(u)
                continue
            self.utts.append(u)
            self.dirs.append(dirs[u])
            self.names.append("\0".join(names))  # no file name holds a NUL
        self.skip_reason = "without face frames"
        if not self.utts:
            raise AvtkError(f"{data_dir}: all {len(utt2spk)} utterances are {self.skip_reason}")
        self.labels = np.array([spk_index[utt2spk[u]] for u in self.utts], dtype=np.int64)

    def __len__(self):
        return len(self.utts)

    def feature_dim(self):
        return None

    def __getitem__(self, item):
        return self.sample(*item)

    def sample(self, index, epoch, speed=None, augment=True):
        """(frame, label, index) of (index, epoch): __getitem__; augment=False: the frame as read (`speed` is
        CropDataset's, unused here)."""
        from avtk.face.frames import augment_face, read_frame

        rng = np.random.default_rng([self.seed, epoch, index])
        names = self.names[index].split("\0")
        try:
            image = read_frame(self.utts[index], Path(self.dirs[index]) / names[int(rng.integers(len(names)))],
                               self.size)
        except AvtkError as err:
            return Failed(str(err))
        if augment:
            image = augment_face(image, rng, **self.probs)
        return torch.from_numpy(image), int(self.labels[index]), index


def make_dataset(data_dir, cfg, seed, augment=None, image_size=None, frames_of=None):
    """The training set of data.input: frames (face), feats or wav (speech), embeddings or av (audio-visual:
    avtk.train.av_data).
    `frames_of(samples)` is the network front end's frame count (wav input; default Kaldi's 25/10 ms)."""
    if cfg["data"]["input"] in ("embeddings", "av"):
        from avtk.train.av_data import AVDataset, EmbeddingDataset

        if cfg["data"]["input"] == "embeddings":
            return EmbeddingDataset(data_dir, cfg, seed)
        return AVDataset(data_dir, cfg, seed, augment=augment, image_size=image_size, frames_of=frames_of)
    if cfg["data"]["input"] == "frames":
        return FrameDataset(data_dir, cfg, seed, image_size)
    return CropDataset(data_dir, cfg, seed, augment=augment, frames_of=frames_of)


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
    """A batch (crops, labels, indices) of dataset items, or the first Failed among them. Items whose crop is
    a tuple of tensors (avtk.train.av_data.AVDataset) give a tuple of stacked tensors."""
    failed = [item for item in items if isinstance(item, Failed)]
    if failed:
        return failed[0]
    crops, labels, index = zip(*items)
    crops = tuple(map(torch.stack, zip(*crops))) if isinstance(crops[0], tuple) else torch.stack(crops)
    return crops, torch.tensor(labels), torch.tensor(index)
