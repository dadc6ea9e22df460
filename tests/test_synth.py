"""The synthetic corpus: layouts, validity, determinism, label noise, and exact landmarks."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avtk.data.table import read_dict
from avtk.data.trials import read_trials
from avtk.face.align import TEMPLATE_112, align_face, umeyama, apply_affine
from conftest import avtk, run

SMALL = """\
num_train_speakers: 6
num_test_speakers: 4
videos_per_speaker: 2
utts_per_video: 3
min_duration: 2.0
max_duration: 3.0
"""


def make(root, *extra):
    conf = root / "corpus.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(SMALL)
    avtk("make-synthetic-corpus", "--config", conf, *extra, root / "corpus", root / "data")
    return root / "corpus", root / "data"


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return make(tmp_path_factory.mktemp("noisy"), "--label-noise", "0.2", "--nj", "2")


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return make(tmp_path_factory.mktemp("clean"), "--nj", "1")


def digest(path):
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def test_data_dirs_validate_with_disjoint_speakers(noisy):
    corpus, data = noisy
    for x in ("train", "test"):
        run(["validate_data_dir.sh", "--no-feats", "--check-audio", data / x])
    train = set(read_dict(data / "train" / "spk2utt"))
    test = set(read_dict(data / "test" / "spk2utt"))
    assert len(train) == 6 and len(test) == 4 and not train & test


def test_layout_audio_and_frames(noisy):
    corpus, data = noisy
    wavs = read_dict(data / "test" / "wav.scp")
    durs = read_dict(data / "test" / "utt2dur")
    frames = read_dict(data / "test" / "frames.scp")
    assert len(wavs) == 4 * 2 * 3
    for utt, path in wavs.items():
        spk, video, name = utt.split("-")
        assert path == str((corpus / "wav" / spk / video / f"{name}.wav").resolve())
        info = sf.info(path)
        assert info.samplerate == 16000 and info.channels == 1
        assert abs(info.duration - float(durs[utt])) < 1e-3 and 2.0 <= info.duration <= 3.0
        jpgs = sorted(Path(frames[utt]).glob("*.jpg"))
        assert len(jpgs) == int(info.duration / 0.4 + 1e-9)
        assert jpgs[0].name == "0010.jpg"
        with Image.open(jpgs[0]) as img:
            assert img.size == (112, 112) and img.mode == "RGB"
        wave, _ = sf.read(path, dtype="float32")
        assert 0.01 < np.sqrt(np.mean(wave ** 2)) < 0.5


def test_seed_lists_match_kaldi_dirs(noisy):
    corpus, data = noisy
    utt2spk = read_dict(data / "train" / "utt2spk")
    train_all = [line.split() for line in (corpus / "train_all.txt").read_text().splitlines()]
    assert len(train_all) == len(utt2spk)
    for spk, rel, dur in train_all:
        assert utt2spk[rel[:-4].replace("/", "-")] == spk and float(dur) >= 2.0
    seed = read_trials(corpus / "O_trials.txt", map_paths=True)
    kaldi = read_trials(data / "test" / "trials")
    assert seed.style == "seed" and kaldi.style == "kaldi"
    assert seed.enroll == kaldi.enroll and seed.test == kaldi.test and (seed.labels == kaldi.labels).all()
    assert len((corpus / "O_list.txt").read_text().splitlines()) == 24


def test_trials_are_balanced_and_targets_cross_videos(noisy):
    _, data = noisy
    trials = read_trials(data / "test" / "trials")
    utt2spk = read_dict(data / "test" / "utt2spk")
    assert trials.labels.sum() * 2 == len(trials)
    for e, t, label in zip(trials.enroll, trials.test, trials.labels):
        assert (utt2spk[e] == utt2spk[t]) == bool(label)
        if label:
            assert e.split("-")[1] != t.split("-")[1]


def test_label_noise_truth_and_determinism(noisy, clean):
    """Same seed: clean utterances are byte-identical whatever --nj and --label-noise; relabelled ones differ."""
    (_, nd), (_, cd) = noisy, clean
    truth = [line.split() for line in (nd / "train" / "label_noise.txt").read_text().splitlines()]
    assert len(truth) == round(0.2 * 36)
    assert not (cd / "train" / "label_noise.txt").exists()
    utt2spk = read_dict(nd / "train" / "utt2spk")
    noisy_utts = set()
    for utt, labelled, true in truth:
        assert utt2spk[utt] == labelled != true and utt.startswith(labelled) and true in read_dict(nd / "train" / "spk2utt")
        noisy_utts.add(utt)
    assert read_dict(nd / "train" / "utt2spk") == read_dict(cd / "train" / "utt2spk")
    nw, cw = read_dict(nd / "train" / "wav.scp"), read_dict(cd / "train" / "wav.scp")
    for utt in nw:
        same = digest(nw[utt]) == digest(cw[utt])
        assert same != (utt in noisy_utts), utt
    for x in ("test",):
        nf, cf = read_dict(nd / x / "frames.scp"), read_dict(cd / x / "frames.scp")
        for utt in nf:
            assert [digest(p) for p in sorted(Path(nf[utt]).glob("*.jpg"))] == \
                   [digest(p) for p in sorted(Path(cf[utt]).glob("*.jpg"))]
    assert (nd / "test" / "trials").read_text() == (cd / "test" / "trials").read_text()


def test_raw_frames_landmarks_align_onto_the_template(noisy):
    corpus, data = noisy
    utt = sorted(read_dict(data / "test" / "wav.scp"))[0]
    raw_dir = corpus / "frame_raw" / utt.replace("-", "/")
    aligned_dir = corpus / "frame_align" / utt.replace("-", "/")
    for line in (raw_dir / "landmarks.txt").read_text().splitlines():
        name, *coords = line.split()
        points = np.array(coords, float).reshape(5, 2)
        m = umeyama(points, TEMPLATE_112)
        assert np.abs(apply_affine(m, points) - TEMPLATE_112).max() < 0.5
        with Image.open(raw_dir / name) as img:
            raw = np.asarray(img)
        assert raw.shape[:2] == (160, 160)
        aligned, _ = align_face(raw, points)
        with Image.open(aligned_dir / name) as img:
            stored = np.asarray(img).astype(float)
        assert np.abs(aligned - stored).mean() < 6.0  # the same face, up to JPEG re-encoding


def test_bad_options_are_clear_errors(tmp_path):
    proc = avtk("make-synthetic-corpus", "--label-noise", "1.5", tmp_path / "c", tmp_path / "d", check=False)
    assert proc.returncode == 1 and "argument --label-noise: 1.5 is out of range (must be >= 0 and < 1)" in proc.stderr
    assert not (tmp_path / "d").exists()
