"""Training data of the audio-visual network (avtk.models.joint): the frozen encoders' embeddings
(data.input: embeddings, `EmbeddingDataset`) or the encoders' own inputs, for fine-tuning them through it
(data.input: av, `AVDataset`: a speech crop and face frames per sample).

As in avtk.train.data, every random choice of a sample comes from a generator seeded by (seed, epoch, index).
"""
import copy
import logging
import os
from pathlib import Path

import numpy as np
import torch

from avtk.data import datadir
from avtk.errors import AvtkError
from avtk.models.joint import pack
from avtk.train.data import CropDataset, Failed

log = logging.getLogger(__name__)


class EmbeddingDataset(torch.utils.data.Dataset):
    """Items (index, epoch) -> (packed float32 row, label, index) for an audio-visual network over frozen
    encoders' embeddings (avtk.models.joint): DATA/audio_emb.scp and DATA/face_emb.scp beside utt2spk.

    audio_emb.scp: every utterance of utt2spk, a (dim,) vector or a (1+K, dim) matrix (`avtk
    extract-embeddings --seed-crops K`: the whole utterance, then K crops; a sample takes one of the K crops at
    random, as training takes random crops, and the means use the whole rows). face_emb.scp: the utterances
    that have a face (the others train the audio branch; avtk train lists them in EXP/train_no_face.txt). Dimensions must agree across
    utterances and with the network (`feature_dim`); values are finite (avtk.io.ark's reader)."""

    skipped, skip_reason = [], ""

    def __init__(self, data_dir, cfg, seed):
        from avtk.io.ark import load_vectors

        self.data_dir, self.seed = os.fspath(data_dir), seed
        path = os.path.join(self.data_dir, "utt2spk")
        if not os.path.isfile(path):
            raise AvtkError(f"{path}: missing (data.input is embeddings: utt2spk, audio_emb.scp and face_emb.scp)")
        utt2spk = datadir.read_table(path, "utt2spk")
        self.speakers = sorted(set(utt2spk.values()))
        if len(self.speakers) < 2:
            raise AvtkError(f"{path}: {len(self.speakers)} speakers; training classifies at least 2")
        spk_index = {s: i for i, s in enumerate(self.speakers)}
        self.utts = sorted(utt2spk)
        self.labels = np.array([spk_index[utt2spk[u]] for u in self.utts], dtype=np.int64)
        paths = {name: os.path.join(self.data_dir, name) for name in ("audio_emb.scp", "face_emb.scp")}
        for (name, path), network in zip(paths.items(), ("speaker", "face")):
            if not os.path.isfile(path):
                raise AvtkError(f"{path}: missing (data.input is embeddings: the {network} network's embeddings of "
                                "these utterances, from avtk extract-embeddings)")
        audio, face = load_vectors(f"scp:{paths['audio_emb.scp']}"), load_vectors(f"scp:{paths['face_emb.scp']}")
        missing = [u for u in self.utts if u not in audio]
        if missing:
            raise AvtkError(f"{paths['audio_emb.scp']}: no entry for {len(missing)} utterances of utt2spk, "
                            f"e.g. {missing[0]}")
        first = np.atleast_2d(audio[self.utts[0]])
        self.audio = np.zeros((len(self.utts),) + first.shape, dtype=np.float32)
        for i, u in enumerate(self.utts):
            x = np.atleast_2d(audio[u])
            if x.shape != first.shape:
                raise AvtkError(f"{paths['audio_emb.scp']}: utterance {u} has shape {x.shape}, but "
                                f"{self.utts[0]} has {first.shape}: every utterance needs the same")
            self.audio[i] = x
        dims = {np.shape(v) for v in face.values()}
        if len(dims) > 1 or any(len(d) != 1 for d in dims):
            raise AvtkError(f"{paths['face_emb.scp']}: face embeddings must be vectors of one dimension, found "
                            f"shapes {sorted(dims)}")
        face_dim = dims.pop()[0] if dims else 0
        self.face = np.zeros((len(self.utts), face_dim), dtype=np.float32)
        self.has_face = np.array([u in face for u in self.utts])
        for i in np.flatnonzero(self.has_face):
            self.face[i] = face[self.utts[i]]
        if not self.has_face.any():
            raise AvtkError(f"{paths['face_emb.scp']}: none of the {len(self.utts)} utterances of utt2spk has a face "
                            "embedding; the audio-visual network needs faces to train its face branch")
        # avtk train warns with their count and lists them in EXP/train_no_face.txt
        self.no_face = [u for u, has in zip(self.utts, self.has_face) if not has]
        extra = len(set(face) - set(utt2spk))
        if extra:
            log.info("%s: %d face embeddings of utterances that are not in utt2spk: not used", paths["face_emb.scp"],
                     extra)
        # the one rule for embeddings (avtk.scoring.check_embeddings): no all-zero vector, no direction
        from avtk.scoring import check_centred, check_embeddings, check_norms

        check_embeddings(self.audio, self.utts, paths["audio_emb.scp"])
        check_norms(self.audio, self.utts, paths["audio_emb.scp"])  # the network centres them
        present = np.flatnonzero(self.has_face)
        check_embeddings(self.face[present], [self.utts[i] for i in present], paths["face_emb.scp"])
        check_norms(self.face[present], [self.utts[i] for i in present], paths["face_emb.scp"])
        # and none that the network's centring removes (identical embeddings: avtk.scoring.check_centred)
        audio_mean, face_mean = self.means()
        for x, mean, keys, path in ((self.audio, audio_mean, self.utts, paths["audio_emb.scp"]),
                                    (self.face[present], face_mean, [self.utts[i] for i in present],
                                     paths["face_emb.scp"])):
            for a in range(0, len(x), 65536):
                check_centred(x[a:a + 65536], x[a:a + 65536] - mean, keys[a:a + 65536], path)

    def __len__(self):
        return len(self.utts)

    def feature_dim(self):
        return self.audio.shape[2] + self.face.shape[1] + 1

    def dims(self):
        """(audio_dim, face_dim) of the tables."""
        return self.audio.shape[2], self.face.shape[1]

    def means(self):
        """(audio mean (audio_dim,), face mean (face_dim,)): of the whole-utterance rows and present faces."""
        return self.audio[:, 0].mean(0), self.face[self.has_face].mean(0)

    def __getitem__(self, item):
        return self.sample(*item)

    def sample(self, index, epoch, speed=None, augment=True):
        """(row, label, index) of (index, epoch): one crop's audio embedding (the whole row when augment=False
        or there are no crops), the face embedding and the flag."""
        rows = self.audio.shape[1]
        row = 0 if rows == 1 or not augment else 1 + int(np.random.default_rng([self.seed, epoch, index]).integers(rows - 1))
        face = self.face[index] if self.has_face[index] else None
        packed = pack(self.audio[index, row][None], [face], self.face.shape[1])[0]
        return torch.from_numpy(packed), int(self.labels[index]), index


class AVDataset(torch.utils.data.Dataset):
    """Items (index, epoch) -> ((speech crop, face frames uint8 (K, H, W, 3), face flag float32 ()), label,
    index) for fine-tuning the speaker and face networks through the audio-visual one (data.input: av).

    The speech crop is CropDataset's of data.speech_input (feats or wav: its rules, skips and augmentation).
    K = data.face_frames frames are drawn at random from the utterance's frames.scp directory and each
    augmented as FrameDataset's frame; an utterance without frames (no frames.scp entry, or an empty
    directory) gets K zero images and flag 0, and trains the audio branch (counted in the log)."""

    def __init__(self, data_dir, cfg, seed, augment=None, image_size=None, frames_of=None):
        from avtk.face.frames import frame_names

        speech_cfg = copy.deepcopy(cfg)
        speech_cfg["data"]["input"] = cfg["data"]["speech_input"]
        self.speech = CropDataset(data_dir, speech_cfg, seed, augment=augment, frames_of=frames_of)
        self.data_dir, self.seed, self.size = self.speech.data_dir, seed, image_size
        self.speakers, self.labels = self.speech.speakers, self.speech.labels
        self.skipped, self.skip_reason = self.speech.skipped, self.speech.skip_reason
        self.k = cfg["data"]["face_frames"]
        self.probs = {k: cfg["augment"][f"face_{k}"] for k in ("flip", "blur", "grey")}
        dd = datadir.load(data_dir)
        dirs = dd.table("frames.scp")
        if dirs is None:
            raise AvtkError(f"{dd.file('frames.scp')}: missing (data.input is av: the face frames of the "
                            "utterances; build it with avtk extract-face-frames)")
        self.dirs = [dirs.get(u) for u in self.speech.utts]
        self.names = ["\0".join(frame_names(u, d)) if d is not None else "" for u, d in zip(self.speech.utts, self.dirs)]
        # avtk train warns with their count and lists them in EXP/train_no_face.txt
        self.no_face = [u for u, n in zip(self.speech.utts, self.names) if not n]
        if len(self.no_face) == len(self.names):
            raise AvtkError(f"{dd.file('frames.scp')}: none of the {len(self.names)} training utterances has face "
                            "frames; the audio-visual network needs faces to train its face branch")

    def __len__(self):
        return len(self.speech)

    def feature_dim(self):
        return self.speech.feature_dim()

    def __getitem__(self, item):
        return self.sample(*item)

    def sample(self, index, epoch, speed=None, augment=True):
        """((crop, frames, flag), label, index) of (index, epoch); augment=False: neither the speech crop's
        augmentation nor the frames'."""
        from avtk.face.frames import augment_face, read_frame

        item = self.speech.sample(index, epoch, speed, augment)
        if isinstance(item, Failed):
            return item
        crop, label, _ = item
        frames = np.zeros((self.k, self.size, self.size, 3), dtype=np.uint8)
        names = self.names[index].split("\0") if self.names[index] else []
        rng = np.random.default_rng([self.seed, epoch, index, 2])
        utt = self.speech.utts[index]
        try:
            for j, pick in enumerate(rng.integers(len(names), size=self.k) if names else ()):
                image = read_frame(utt, Path(self.dirs[index]) / names[int(pick)], self.size)
                frames[j] = augment_face(image, rng, **self.probs) if augment else image
        except AvtkError as err:
            return Failed(str(err))
        flag = torch.tensor(1.0 if names else 0.0)
        return (crop, torch.from_numpy(frames), flag), label, index
