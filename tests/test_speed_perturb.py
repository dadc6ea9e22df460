"""Speed perturbation (augment.speed_perturb, REFERENCE §4): the perturbed crop against an analytic reference,
the labels of the extra classes, reproducibility with DataLoader workers, the model's speakers list, and the
config error for feature input."""
import numpy as np
import pytest
import soundfile as sf
import torch

from avtk.augment import speed_crop, speed_speakers
from avtk.data.table import utt2spk_to_spk2utt, write_dict
from avtk.io.audio import write_wav
from avtk.train.config import load_config
from avtk.train.data import CropDataset, ShardedBatches, collate
from conftest import SMALL_SPEAKER, avtk

RATE = 16000
TONES = ((220.0, 0.2, 0.3), (1370.0, 0.1, 1.1), (3100.0, 0.05, 2.0), (4700.0, 0.03, 0.5))  # Hz, amplitude, phase


def tones(t):
    """The band-limited test signal at times t (seconds)."""
    return sum(a * np.sin(2 * np.pi * f * t + p) for f, a, p in TONES)


@pytest.mark.parametrize("speed", [0.9, 1.1, 0.95])
def test_perturbed_crop_is_the_source_played_at_that_speed(speed):
    """Output sample m of speed s is the source at time (start + m·s)/16000: pitch and tempo both scaled by s."""
    n, length = 3 * RATE, 32240
    wave = tones(np.arange(n) / RATE).astype(np.float32)
    out = speed_crop(wave, length, speed, np.random.default_rng(5))
    start = np.random.default_rng(5).integers(0, n - int(np.ceil(length * speed)) + 1)
    expected = tones((start + np.arange(length) * speed) / RATE)
    assert out.dtype == np.float32 and out.shape == (length,)
    inner = slice(64, length - 64)  # the resampler's filter sees zeros past the crop's two ends
    np.testing.assert_allclose(out[inner], expected[inner], atol=2e-4)
    # and an independent polyphase resampler agrees (scipy's Kaiser FIR)
    from scipy.signal import resample_poly

    up, down = 100, int(round(speed * 100))
    crop = wave[start:start + int(np.ceil(length * speed))].astype(np.float64)
    np.testing.assert_allclose(out[inner], resample_poly(crop, up, down)[:length][inner], atol=2e-3)


def test_speed_one_is_the_plain_crop_and_class_names_follow_kaldi():
    wave = np.random.default_rng(0).normal(0, 0.1, 40000).astype(np.float32)
    start = np.random.default_rng(1).integers(0, 40000 - 32240 + 1)
    np.testing.assert_array_equal(speed_crop(wave, 32240, 1.0, np.random.default_rng(1)), wave[start:start + 32240])
    assert speed_speakers(["a", "b"], [1.0, 0.9, 1.1]) == ["a", "b", "sp0.9-a", "sp0.9-b", "sp1.1-a", "sp1.1-b"]
    assert speed_speakers(["a", "b"], []) == ["a", "b"]


def write_data(root, speakers=3, utts=3, seconds=2.5):
    """A wav data dir: each speaker a tone of its own pitch, utterances `seconds` long."""
    wav_scp, utt2spk, utt2dur = {}, {}, {}
    for s in range(speakers):
        for u in range(utts):
            utt = f"spk{s}-u{u}"
            t = np.arange(int(seconds * RATE)) / RATE
            wave = 0.3 * np.sin(2 * np.pi * (150 + 60 * s + 7 * u) * t) + 0.01 * np.random.default_rng(u).normal(
                size=len(t))
            write_wav(root / "wav" / f"{utt}.wav", wave.astype(np.float32))
            wav_scp[utt], utt2spk[utt], utt2dur[utt] = str(root / "wav" / f"{utt}.wav"), f"spk{s}", f"{seconds:.3f}"
    data = root / "data"
    write_dict(data / "wav.scp", wav_scp)
    write_dict(data / "utt2spk", utt2spk)
    write_dict(data / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    write_dict(data / "utt2dur", utt2dur)
    return data


SPEEDS = "augment.speed_perturb=[1.0, 0.9, 1.1]"


def test_labels_are_offset_by_speakers_times_speed_index(tmp_path):
    data = write_data(tmp_path)
    cfg = load_config(None, ["data.input=wav", SPEEDS])
    dataset = CropDataset(data, cfg, seed=4)
    n_spk = len(dataset.speakers)
    counts = np.zeros(3, int)
    for epoch in range(1, 9):
        for index in range(len(dataset)):
            crop, label, _ = dataset[(index, epoch)]
            k = int(np.random.default_rng([4, epoch, index]).integers(3))  # drawn first (CropDataset doc)
            assert label == dataset.labels[index] + n_spk * k
            counts[k] += 1
            assert crop.shape == (32240,)
            if k == 0:  # speed 1: the plain crop of the file, its start drawn after k
                rng = np.random.default_rng([4, epoch, index])
                rng.integers(3)
                wave = sf.read(data.parent / "wav" / f"{dataset.utts[index]}.wav", dtype="float32")[0]
                start = rng.integers(0, len(wave) - 32240 + 1)
                np.testing.assert_array_equal(crop.numpy(), wave[start:start + 32240])
    assert counts.min() >= 14, counts  # 72 draws, uniform over 3


def batches(dataset, workers, epochs=(1, 2)):
    sampler = ShardedBatches(len(dataset), 4, 0, 1, 0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                         persistent_workers=workers > 0)
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out += [(c.numpy(), y.numpy(), i.numpy()) for c, y, i in loader]
    return out


def test_same_seed_same_samples_with_0_and_2_workers(tmp_path):
    from avtk.train.trainer import _augmenter

    data = write_data(tmp_path)
    avtk("make-augment-sources", "--num-noise", 2, "--num-music", 2, "--num-speech", 3, "--num-rirs", 2,
         tmp_path / "aug", tmp_path / "augdata")
    cfg = load_config(None, ["data.input=wav", SPEEDS, "augment.wave=true"]
                      + [f"augment.{k}_dir={tmp_path / 'augdata' / d}" for k, d in
                         (("noise", "musan_noise"), ("music", "musan_music"), ("speech", "musan_speech"),
                          ("rir", "rirs"))])
    dataset = CropDataset(data, cfg, seed=0, augment=_augmenter(cfg))
    serial, parallel = batches(dataset, 0), batches(dataset, 2)
    assert len(serial) == len(parallel) == 4
    for (c0, y0, i0), (c2, y2, i2) in zip(serial, parallel):
        np.testing.assert_array_equal(i0, i2)
        np.testing.assert_array_equal(y0, y2)
        np.testing.assert_array_equal(c0, c2)
    labels = np.concatenate([y for _, y, _ in serial])
    assert labels.max() >= 3  # some perturbed classes


def test_training_has_a_class_per_speaker_and_speed(tmp_path):
    """avtk train: 3 x the speakers as classes, named in the model file, which extraction then reads."""
    data = write_data(tmp_path, speakers=2, utts=4)
    exp = tmp_path / "exp"
    avtk("train", "--config", "/dev/null", "--train-data", data, "--exp", exp, *SMALL_SPEAKER, "data.input=wav",
         SPEEDS, "data.batch_size=4", "runtime.epochs=1", "runtime.average_last=1", "runtime.device=cpu",
         "data.num_workers=1")
    ckpt = torch.load(exp / "checkpoints/epoch_001.pt", map_location="cpu", weights_only=False)
    names = ["spk0", "spk1", "sp0.9-spk0", "sp0.9-spk1", "sp1.1-spk0", "sp1.1-spk1"]
    assert ckpt["speakers"] == names
    assert any(t.shape[0] == 6 for t in ckpt["loss"].values() if t.dim() == 2)
    model = torch.load(exp / "avg_model.pt", map_location="cpu", weights_only=False)
    assert model["speakers"] == names and model["config"]["augment"]["speed_perturb"] == [1.0, 0.9, 1.1]
    avtk("extract-embeddings", "--model", exp / "avg_model.pt", f"scp:{data / 'wav.scp'}",
         f"ark,t:{tmp_path / 'emb.txt'}")
    assert len((tmp_path / "emb.txt").read_text().strip().splitlines()) > 0


def test_speed_perturbation_on_features_is_an_error_naming_the_key(tmp_path):
    conf = tmp_path / "sp.yaml"
    conf.write_text("data: {input: feats}\naugment: {speed_perturb: [1.0, 0.9, 1.1]}\n")
    exp = tmp_path / "exp"
    proc = avtk("train", "--config", conf, "--train-data", tmp_path, "--exp", exp, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"{conf}: augment.speed_perturb = [1.0, 0.9, 1.1]: needs data.input: wav (the speed of audio is changed "
        "before the front end), not feats; set augment.speed_perturb: [] or train on wav"), proc.stderr
    assert not list(exp.iterdir())  # EXP is made first (bin/train.py); no config.yaml or checkpoint in it
    proc = avtk("train", "--config", conf, "--train-data", tmp_path, "--exp", exp, "data.input=wav",
                "augment.speed_perturb=[0.9, 0.9]", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].endswith(
        f"{conf} with overrides: augment.speed_perturb = [0.9, 0.9]: must be distinct multiples of 0.01")
    proc = avtk("train", "--config", conf, "--train-data", tmp_path, "--exp", exp, "augment.speed_perturb=[3]",
                check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].endswith(
        "override 'augment.speed_perturb=[3]': augment.speed_perturb = [3]: each value must be >= 0.5 and <= 2")
    assert not list(exp.iterdir())
