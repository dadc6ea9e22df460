"""The synthetic audio-visual corpus: VoxCeleb-style tree, Kaldi data dirs, the seed's lists, trials.

Everything is derived from one seed. Each speaker's voice and face, each video's session and each
utterance have their own random stream, so a clean utterance is identical whatever `label_noise` or `nj` is.
"""
import contextlib
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from avtk.data.table import utt2spk_to_spk2utt, write_dict
from avtk.io.atomic import atomic_dir, atomic_open, atomic_path
from avtk.face.align import align_face
from avtk.synth import face, session, voice

log = logging.getLogger(__name__)
SR = 16000
TRAIN, TEST, DEV = 0, 1, 2
SPLITS = {TRAIN: "train", TEST: "test", DEV: "dev"}
_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"))


@dataclass(frozen=True)
class Config:
    num_train_speakers: int = 40
    num_test_speakers: int = 20
    num_dev_speakers: int = 0  # a third disjoint set with trials, for calibration and fusion training
    videos_per_speaker: int = 3
    utts_per_video: int = 4
    min_duration: float = 2.0
    max_duration: float = 8.0
    frame_interval: float = 0.4
    label_noise: float = 0.0
    raw_frames: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Utterance:
    split: int
    spk: str          # the label (the folder it is filed under)
    true_spk: str     # whose voice and face it really is
    video: str
    name: str         # 00001
    duration: float
    key: tuple        # random stream of this utterance

    @property
    def rel(self):
        return f"{self.spk}/{self.video}/{self.name}"

    @property
    def utt_id(self):
        return self.rel.replace("/", "-")


def _rng(cfg, *key):
    return np.random.default_rng([cfg.seed, *key])


def speaker_ids(cfg):
    """Speaker ids of the train, test and dev splits (VoxCeleb-like: id0xxxx, id1xxxx, id2xxxx)."""
    return ([f"id{i:05d}" for i in range(1, cfg.num_train_speakers + 1)],
            [f"id{10000 + i:05d}" for i in range(1, cfg.num_test_speakers + 1)],
            [f"id{20000 + i:05d}" for i in range(1, cfg.num_dev_speakers + 1)])


def plan(cfg):
    """All utterances of the corpus, with label noise applied to the training split."""
    utts = []
    for split, spks in enumerate(speaker_ids(cfg)):
        for s, spk in enumerate(spks):
            rng = _rng(cfg, 0, split, s)
            for v in range(cfg.videos_per_speaker):
                video = "".join(rng.choice(_ID_CHARS, 11))
                for u in range(cfg.utts_per_video):
                    dur = round(float(rng.uniform(cfg.min_duration, cfg.max_duration)), 2)
                    utts.append(Utterance(split, spk, spk, video, f"{u + 1:05d}", dur, (split, s, v, u)))
    train = [i for i, u in enumerate(utts) if u.split == TRAIN]
    n_noisy = int(round(cfg.label_noise * len(train)))
    if n_noisy and cfg.num_train_speakers < 2:
        raise ValueError("label noise needs at least two training speakers")
    rng = _rng(cfg, 9)
    train_spks = speaker_ids(cfg)[0]
    for i in sorted(rng.choice(train, n_noisy, replace=False)) if n_noisy else []:
        u = utts[i]
        others = [s for s in train_spks if s != u.spk]
        utts[i] = Utterance(u.split, u.spk, str(rng.choice(others)), u.video, u.name, u.duration, u.key)
    return utts


def _identities(cfg, split, s):
    rng = _rng(cfg, 1, split, s)
    return voice.sample_voice(rng), face.sample_identity(rng)


def _sessions(cfg, split, s, v):
    rng = _rng(cfg, 2, split, s, v)
    return session.sample_audio_session(rng), face.sample_face_session(rng)


def _speaker_index(cfg, spk):
    for split, spks in enumerate(speaker_ids(cfg)):
        if spk in spks:
            return split, spks.index(spk)
    raise KeyError(spk)


def generate_utterance(cfg, out, utt):
    """Write one utterance's wav, aligned frames and raw frames with landmarks."""
    split, s, v, u = utt.key
    vox, ident = _identities(cfg, *_speaker_index(cfg, utt.true_spk))
    audio_sess, face_sess = _sessions(cfg, split, s, v)
    rng = _rng(cfg, 3, *utt.key)
    n = int(round(utt.duration * SR))
    clean = voice.synthesize(vox, n, rng, f0_shift=float(np.exp(rng.normal(0, 0.04))),
                             rate_jitter=float(np.exp(rng.normal(0, 0.05))))
    wave = session.apply_session(clean, audio_sess, rng)
    wav_path = out / "wav" / f"{utt.rel}.wav"
    with atomic_path(wav_path) as tmp:
        sf.write(tmp, wave, SR, subtype="PCM_16", format="WAV")

    sprite = face.render_sprite(ident, face_sess, mouth_open=float(rng.uniform(0, 0.6)),
                                smile=float(rng.uniform(-0.3, 0.5)), eye_open=float(rng.uniform(0.6, 1.0)))
    sprite, background = face.blur_layers(sprite, face.render_background(face_sess), face_sess)
    n_frames = int(np.floor(utt.duration / cfg.frame_interval + 1e-9))
    with contextlib.ExitStack() as stack:  # each frame directory appears whole, with one rename
        aligned_dir = stack.enter_context(atomic_dir(out / "frame_align" / utt.rel))
        raw_dir = stack.enter_context(atomic_dir(out / "frame_raw" / utt.rel)) if cfg.raw_frames else None
        landmarks = []
        for k in range(1, n_frames + 1):
            name = f"{int(round(k * cfg.frame_interval * 25)):04d}.jpg"  # 25 fps frame number, as in the seed
            raw, points = face.raw_frame(sprite, background, face_sess, face.frame_pose(face_sess, rng), rng)
            aligned, _ = align_face(raw, points)
            Image.fromarray(aligned).save(os.path.join(aligned_dir, name), format="JPEG", quality=92)
            if raw_dir:
                Image.fromarray(raw).save(os.path.join(raw_dir, name), format="JPEG", quality=92)
                landmarks.append(name + " " + " ".join(f"{c:.3f}" for c in points.ravel()))
        if raw_dir:
            with open(os.path.join(raw_dir, "landmarks.txt"), "w") as f:
                f.write("\n".join(landmarks) + "\n")


def _worker(job):
    import torch

    torch.set_num_threads(1)
    cfg, out, utts = job
    for utt in utts:
        generate_utterance(cfg, Path(out), utt)
    return len(utts)


def _trials(cfg, test_utts, stream=8):
    """Balanced trials: every cross-video target pair, and as many random non-target pairs."""
    by_spk = {}
    for u in test_utts:
        by_spk.setdefault(u.spk, []).append(u)
    target = [(a, b) for us in by_spk.values() for i, a in enumerate(us) for b in us[i + 1:] if a.video != b.video]
    rng = _rng(cfg, stream)
    nontarget, seen = [], set()
    while len(nontarget) < len(target) and len(by_spk) > 1:
        a, b = rng.choice(len(test_utts), 2, replace=False)
        a, b = test_utts[a], test_utts[b]
        if a.spk != b.spk and (a.utt_id, b.utt_id) not in seen:
            seen.add((a.utt_id, b.utt_id))
            nontarget.append((a, b))
    trials = [(a, b, 1) for a, b in target] + [(a, b, 0) for a, b in nontarget]
    return [trials[i] for i in rng.permutation(len(trials))]


def _write_data_dir(path, utts, out, raw_frames, frames_root="frame_align"):
    write_dict(path / "wav.scp", {u.utt_id: str((out / "wav" / f"{u.rel}.wav").resolve()) for u in utts})
    utt2spk = {u.utt_id: u.spk for u in utts}
    write_dict(path / "utt2spk", utt2spk)
    write_dict(path / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    write_dict(path / "utt2dur", {u.utt_id: f"{u.duration:.2f}" for u in utts})
    write_dict(path / "frames.scp", {u.utt_id: str((out / frames_root / u.rel).resolve()) for u in utts})
    if raw_frames:  # raw frames with ground-truth landmarks, for avtk extract-face-frames --detector landmarks
        write_dict(path / "raw_frames.scp", {u.utt_id: str((out / "frame_raw" / u.rel).resolve()) for u in utts})


def make_corpus(cfg, out_dir, data_dir, nj=2):
    """Generate the corpus under out_dir and its Kaldi data dirs data_dir/{train,test[,dev]}."""
    out, data = Path(out_dir), Path(data_dir)
    utts = plan(cfg)
    by_spk = {}
    for u in utts:
        by_spk.setdefault(u.spk, []).append(u)
    jobs = [(cfg, str(out), us) for us in by_spk.values()]
    log.info("generating %d utterances of %d speakers with %d jobs", len(utts), len(by_spk), nj)
    if nj > 1:
        with multiprocessing.get_context("fork").Pool(nj) as pool:
            done = sum(pool.imap_unordered(_worker, jobs))
    else:
        done = sum(map(_worker, jobs))
    assert done == len(utts)

    train = [u for u in utts if u.split == TRAIN]
    test = [u for u in utts if u.split == TEST]
    trials = _trials(cfg, test)
    for split, name in SPLITS.items():
        subset = [u for u in utts if u.split == split]
        if subset:
            _write_data_dir(data / name, subset, out, cfg.raw_frames)
        if subset and split != TRAIN:
            with atomic_open(data / name / "trials") as f:
                f.writelines(f"{a.utt_id} {b.utt_id} {'target' if t else 'nontarget'}\n"
                             for a, b, t in (trials if split == TEST else _trials(cfg, subset, stream=10)))
    # The seed's lists: train_all.txt (spk path duration), O_list.txt (path duration), O_trials.txt (1|0 a b).
    with atomic_open(out / "train_all.txt") as f:
        f.writelines(f"{u.spk} {u.rel}.wav {u.duration:.2f}\n" for u in train)
    with atomic_open(out / "O_list.txt") as f:
        f.writelines(f"{u.rel}.wav {u.duration:.2f}\n" for u in test)
    with atomic_open(out / "O_trials.txt") as f:
        f.writelines(f"{t} {a.rel}.wav {b.rel}.wav\n" for a, b, t in trials)
    noisy = [u for u in train if u.spk != u.true_spk]
    if cfg.label_noise > 0:
        with atomic_open(data / "train" / "label_noise.txt") as f:
            f.writelines(f"{u.utt_id} {u.spk} {u.true_spk}\n" for u in noisy)
    log.info("wrote %d train, %d test and %d dev utterances, %d test trials, %d relabelled training utterances",
             len(train), len(test), len(utts) - len(train) - len(test), len(trials), len(noisy))
    return utts
