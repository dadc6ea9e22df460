"""avtk train and avtk extract-embeddings on a tiny corpus: config, DDP, resume, extraction, bad input."""
import os
import re
import signal
import subprocess
import sys
import time

import kaldiio
import numpy as np
import pytest
import torch
import yaml

import conftest
from conftest import _env, avtk, run

TINY = {
    "model": {"encoder": "ecapa_tdnn", "encoder_args": {"in_dim": 80, "channels": 32, "embed_dim": 16}},
    "loss": {"margin": 0.2, "scale": 30.0, "margin_warmup_epochs": 1},
    "optim": {"lr": 0.005},
    "data": {"batch_size": 8, "crop_seconds": 1.0},
    "runtime": {"epochs": 2, "log_interval": 2, "keep_last": 5, "average_last": 2},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    avtk("make-synthetic-corpus", "--num-train-speakers", 4, "--num-test-speakers", 3, "--videos-per-speaker", 2,
         "--utts-per-video", 3, "--min-duration", 1.5, "--max-duration", 3, "--no-raw-frames",
         root / "corpus", root / "data")
    for x in ("train", "test"):
        d = root / "data" / x
        avtk("compute-fbank", "--write-num-frames", d / "utt2num_frames", f"scp:{d}/wav.scp",
             f"ark,scp:{root}/fbank_{x}.ark,{d}/feats.scp")
    return root


def write_conf(path, **changes):
    return conftest.write_conf(path, TINY, **changes)


def train(corpus, exp, conf, *extra, check=True):
    return avtk("train", "--config", conf, "--train-data", corpus / "data/train", "--exp", exp, *extra, check=check)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_train_writes_config_checkpoints_average_and_validation(corpus, tmp_path):
    exp = tmp_path / "exp"
    proc = train(corpus, exp, write_conf(tmp_path / "c.yaml"), "--val-trials", corpus / "data/test/trials",
                 "runtime.epochs=3")
    resolved = yaml.safe_load((exp / "config.yaml").read_text())
    assert resolved["runtime"]["epochs"] == 3 and resolved["optim"]["name"] == "adam"
    assert sorted(os.listdir(exp / "checkpoints")) == ["epoch_001.pt", "epoch_002.pt", "epoch_003.pt"]
    state = torch.load(exp / "checkpoints/epoch_003.pt", map_location="cpu", weights_only=False)
    for key in ("model", "loss", "optimizer", "scheduler", "scaler", "sampler", "rng", "config"):
        assert key in state
    avg = weights(exp / "avg_model.pt")
    e2, e3 = weights(exp / "checkpoints/epoch_002.pt"), weights(exp / "checkpoints/epoch_003.pt")
    k = "encoder.fc6.weight"
    assert torch.allclose(avg[k], (e2[k] + e3[k]) / 2, atol=1e-6)
    assert len((exp / "validation.txt").read_text().splitlines()) == 3
    line = re.search(r"epoch 1 step 2/\d+ lr \S+ loss \S+ acc \S+% margin \S+ samples/s \S+", proc.stderr)
    assert line, proc.stderr


def test_unknown_config_key_is_named(corpus, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("optim: {lrr: 0.1}\n")
    proc = train(corpus, tmp_path / "exp", conf, check=False)
    assert proc.returncode == 1 and "unknown config key 'optim.lrr'" in proc.stderr
    proc = train(corpus, tmp_path / "exp", write_conf(tmp_path / "d.yaml"), "runtime.epochz=3", check=False)
    assert proc.returncode == 1 and "unknown config key 'runtime.epochz'" in proc.stderr


def test_resume_after_kill_is_bit_identical(corpus, tmp_path):
    conf = write_conf(tmp_path / "c.yaml", runtime__epochs=3)
    train(corpus, tmp_path / "full", conf)
    exp = tmp_path / "killed"
    cmd = [sys.executable, "-m", "avtk.cli", "train", "--config", str(conf), "--train-data",
           str(corpus / "data/train"), "--exp", str(exp)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = exp / "checkpoints/epoch_001.pt"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    assert not (exp / "avg_model.pt").exists()
    train(corpus, exp, conf, "--resume")
    a, b = weights(tmp_path / "full/checkpoints/epoch_003.pt"), weights(exp / "checkpoints/epoch_003.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_gloo_ranks_keep_identical_weights(corpus, tmp_path):
    conf = write_conf(tmp_path / "c.yaml", runtime__epochs=1)
    exp = tmp_path / "ddp"
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "avtk.cli", "train", "--config", conf, "--train-data", corpus / "data/train", "--exp", exp])
    sums = dict(re.findall(r"\[rank (\d)\] final weights checksum (\S+)", proc.stderr))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], proc.stderr
    assert "gloo backend" in proc.stderr and (exp / "avg_model.pt").exists()


def test_batched_extraction_equals_unbatched(corpus, tmp_path):
    exp = tmp_path / "exp"
    train(corpus, exp, write_conf(tmp_path / "c.yaml", runtime__epochs=1))
    feats = f"scp:{corpus}/data/test/feats.scp"
    avtk("extract-embeddings", "--model", exp / "avg_model.pt", feats, f"ark,scp:{tmp_path}/b.ark,{tmp_path}/b.scp")
    avtk("extract-embeddings", "--model", exp / "avg_model.pt", "--max-frames", 1, feats,
         f"ark,scp:{tmp_path}/u.ark,{tmp_path}/u.scp")
    wav = f"scp:{corpus}/data/test/wav.scp"
    avtk("extract-embeddings", "--model", exp / "avg_model.pt", wav, f"ark,scp:{tmp_path}/w.ark,{tmp_path}/w.scp")
    batched, single = kaldiio.load_scp(str(tmp_path / "b.scp")), kaldiio.load_scp(str(tmp_path / "u.scp"))
    from_wav = kaldiio.load_scp(str(tmp_path / "w.scp"))
    assert list(batched) == sorted(batched) and len(batched) == 3 * 2 * 3
    for k in batched:
        assert np.abs(batched[k] - single[k]).max() < 1e-5
        assert np.abs(batched[k] - from_wav[k]).max() < 1e-4  # the model's own front end = compute-fbank


def test_bad_inputs(corpus, tmp_path):
    exp = tmp_path / "exp"
    train(corpus, exp, write_conf(tmp_path / "c.yaml", runtime__epochs=1))
    model = exp / "avg_model.pt"
    # An utterance without frames is skipped and counted; a wrong feature dimension names both.
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/x.ark,{tmp_path}/x.scp") as w:
        w["a"] = np.random.default_rng(0).normal(size=(150, 80)).astype(np.float32)
        w["b"] = np.zeros((0, 80), np.float32)
    proc = avtk("extract-embeddings", "--model", model, f"scp:{tmp_path}/x.scp", f"ark,scp:{tmp_path}/o.ark,{tmp_path}/o.scp")
    assert "skipped 1 of 2 utterances" in proc.stderr and list(kaldiio.load_scp(str(tmp_path / "o.scp"))) == ["a"]
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/y.ark,{tmp_path}/y.scp") as w:
        w["a"] = np.zeros((150, 40), np.float32)
    proc = avtk("extract-embeddings", "--model", model, f"scp:{tmp_path}/y.scp", f"ark:{tmp_path}/o2.ark", check=False)
    assert proc.returncode == 1 and "features have 40 dimensions but the model expects 80" in proc.stderr
    conf = write_conf(tmp_path / "d.yaml", model__encoder_args={"in_dim": 40, "channels": 32, "embed_dim": 16})
    proc = train(corpus, tmp_path / "exp40", conf, check=False)
    assert proc.returncode == 1 and "80-dimensional features but the model (ecapa_tdnn) expects 40" in proc.stderr


def test_nan_loss_stops_with_a_message_and_a_saved_state(corpus, tmp_path):
    data = tmp_path / "nan"
    data.mkdir()
    for name in ("utt2spk", "spk2utt", "wav.scp", "utt2num_frames"):
        (data / name).write_text((corpus / "data/train" / name).read_text())
    feats = kaldiio.load_scp(str(corpus / "data/train/feats.scp"))
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/nan.ark,{data}/feats.scp") as w:
        for k in sorted(feats):
            w[k] = np.full_like(feats[k], 3e38)  # finite (NaN is refused when read), but its mean overflows
    proc = avtk("train", "--config", write_conf(tmp_path / "c.yaml"), "--train-data", data, "--exp", tmp_path / "exp",
                check=False)
    # checked once per log interval (2 steps); the saved state is the one before the interval: finite weights
    assert proc.returncode == 1 and "loss is not finite at epoch 1 in steps 1-2 (2 steps of 1 rank;" in proc.stderr
    assert "the weights before step 1" in proc.stderr and "Traceback" not in proc.stderr
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "exp/checkpoints/last_good.pt").values())


def test_short_utterances_are_wrap_padded():
    from avtk.train.data import wrap_crop

    x = np.arange(5, dtype=np.float32)[:, None]
    out = wrap_crop(x, 12, np.random.default_rng(0))
    assert out[:, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


def test_seed_crop_mode_and_its_score(corpus, tmp_path):
    exp = tmp_path / "exp"
    train(corpus, exp, write_conf(tmp_path / "c.yaml", runtime__epochs=1))
    feats = f"scp:{corpus}/data/test/feats.scp"
    avtk("extract-embeddings", "--model", exp / "avg_model.pt", feats, f"ark,scp:{tmp_path}/w.ark,{tmp_path}/w.scp")
    avtk("extract-embeddings", "--model", exp / "avg_model.pt", "--seed-crops", 5, feats,
         f"ark,scp:{tmp_path}/c.ark,{tmp_path}/c.scp")
    whole, sets = kaldiio.load_scp(str(tmp_path / "w.scp")), kaldiio.load_scp(str(tmp_path / "c.scp"))
    for k in whole:
        assert sets[k].shape == (6, 16) and np.abs(sets[k][0] - whole[k]).max() < 1e-5
    avtk("score", "--trials", corpus / "data/test/trials", f"scp:{tmp_path}/c.scp", tmp_path / "s.txt")
    enroll, test, score, _ = (tmp_path / "s.txt").read_text().splitlines()[0].split()
    unit = lambda m: m / np.linalg.norm(m, axis=-1, keepdims=True)
    a, b = unit(sets[enroll]), unit(sets[test])
    expected = (a[0] @ b[0] + (a[1:] @ b[1:].T).mean()) / 2
    assert abs(float(score) - expected) < 1e-5


def test_train_from_wav_with_augmentation_and_sgd(corpus, tmp_path):
    avtk("make-augment-sources", "--num-noise", 3, "--num-music", 2, "--num-speech", 4, "--num-rirs", 3,
         tmp_path / "aug", tmp_path / "data")
    d = tmp_path / "data"
    conf = write_conf(tmp_path / "c.yaml", runtime__epochs=1, data__input="wav",
                      augment__wave=True, augment__spec_augment=False, augment__noise_dir=str(d / "musan_noise"),
                      augment__music_dir=str(d / "musan_music"), augment__speech_dir=str(d / "musan_speech"),
                      augment__rir_dir=str(d / "rirs"), optim__name="sgd", optim__lr=0.05)
    exp = tmp_path / "exp"
    train(corpus, exp, conf, "--val-trials", corpus / "data/test/trials")
    assert (exp / "avg_model.pt").exists() and yaml.safe_load((exp / "config.yaml").read_text())["optim"]["name"] == "sgd"
    # An avg_model trained on audio embeds features from compute-fbank too: one front end.
    avtk("extract-embeddings", "--model", exp / "avg_model.pt", f"scp:{corpus}/data/test/wav.scp",
         f"ark:{tmp_path}/e.ark")


def test_every_recipe_training_config_loads():
    """egs/*/conf/*.yaml training configs resolve against the defaults (an unknown key would be an error)."""
    from avtk.train.config import load_config
    from conftest import REPO

    confs = [p for p in sorted(REPO.glob("egs/*/conf/*.yaml")) if "model" in yaml.safe_load(p.read_text())]
    assert {p.name for p in confs} >= {"ecapa_mini.yaml", "iresnet_mini.yaml", "ecapa_l.yaml", "iresnet18.yaml"}
    for p in confs:
        # fine-tuning through the joint network: run.sh names the two networks' model files
        joint = yaml.safe_load(p.read_text()).get("data", {}).get("input") == "av"
        cfg = load_config(p, ["finetune.speaker_model=s.pt", "finetune.face_model=f.pt"] if joint else [])
        face = cfg["model"]["encoder"].startswith("iresnet")
        assert (cfg["data"]["input"] == "frames") == face
        margin = 0.4 if face else 0.5 if p.stem.endswith("_lm") else 0.2  # *_lm: large-margin fine-tuning
        # WeSpeaker's recipes (ResNet34/221/293, CAM++ on VoxCeleb): s 32; the seed's ECAPA and the mini nets: 30
        wespeaker = p.parts[-3] == "voxceleb" and (cfg["model"]["encoder"].startswith("resnet") or p.name == "campplus.yaml")
        if p.parts[-3] == "voxceleb" and p.name == "eres2netv2.yaml":  # 3D-Speaker's recipe: m 0.3, s 32
            margin, wespeaker = 0.3, True
        scale = 64.0 if face else 32.0 if wespeaker else 30.0
        assert (cfg["loss"]["margin"], cfg["loss"]["scale"]) == (margin, scale), p


def test_a_fresh_run_replaces_a_previous_run_in_the_same_exp(corpus, tmp_path):
    """Re-running a recipe stage without --resume must not average, prune or validate against the files
    an earlier (longer) run left in EXP."""
    exp = tmp_path / "exp"
    conf = write_conf(tmp_path / "c.yaml")
    train(corpus, exp, conf, "--val-trials", corpus / "data/test/trials", "runtime.epochs=3")
    proc = train(corpus, exp, conf, "--val-trials", corpus / "data/test/trials", "runtime.epochs=2")
    assert "held 5 files of a previous run" in proc.stderr
    assert sorted(os.listdir(exp / "checkpoints")) == ["epoch_001.pt", "epoch_002.pt"]
    assert torch.load(exp / "avg_model.pt", map_location="cpu", weights_only=False)["epochs"] == [1, 2]
    assert [line.split()[0] for line in (exp / "validation.txt").read_text().splitlines()] == ["1", "2"]
