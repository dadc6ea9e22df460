"""avtk train on bad configs, bad training data and interrupted runs: one ERROR line naming the file and the key
or utterance, exit status 1, nothing that looks finished; resume rules. A tiny feature corpus written here keeps
each run to a few seconds; the commands run in process through avtk.cli.main, as the console script does."""
import os

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import conftest
from avtk.cli import main as avtk_main

TINY = {
    "model": {"encoder": "ecapa_tdnn", "encoder_args": {"in_dim": 80, "channels": 16, "embed_dim": 8}},
    "optim": {"lr": 0.005},
    "data": {"batch_size": 4, "crop_seconds": 0.5, "min_seconds": 0.2},
    "augment": {"spec_augment": False},
    "runtime": {"epochs": 2, "log_interval": 1, "keep_last": 3, "average_last": 2, "threads": 1},
}
SPEAKERS, PER_SPEAKER, FRAMES = 4, 2, 60


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def write_table(path, rows):
    path.write_text("".join(" ".join(map(str, row)) + "\n" for row in rows))


def make_data(root, frames=None, dims=None):
    """A data dir of random 80-dim features (wav.scp of unused paths); frames/dims: {utt: value} overrides."""
    d = root / "data"
    d.mkdir(parents=True)
    utts = [f"s{s}-u{i}" for s in range(SPEAKERS) for i in range(PER_SPEAKER)]
    rng = np.random.default_rng(0)
    n = {u: (frames or {}).get(u, FRAMES) for u in utts}
    with kaldiio.WriteHelper(f"ark,scp:{root}/feats.ark,{d}/feats.scp") as w:
        for u in utts:
            w[u] = rng.normal(size=(n[u], (dims or {}).get(u, 80))).astype(np.float32)
    write_table(d / "wav.scp", [(u, f"/nonexistent/{u}.wav") for u in utts])
    write_table(d / "utt2spk", [(u, u.split("-")[0]) for u in utts])
    write_table(d / "spk2utt", [(f"s{s}", " ".join(u for u in utts if u.startswith(f"s{s}-"))) for s in range(SPEAKERS)])
    write_table(d / "utt2num_frames", [(u, n[u]) for u in utts])
    write_table(d / "trials", [("s0-u0", "s0-u1", "target"), ("s0-u0", "s1-u0", "nontarget"),
                               ("s2-u0", "s2-u1", "target"), ("s2-u0", "s3-u1", "nontarget")])
    return d


def write_conf(path, **changes):
    return conftest.write_conf(path, TINY, **changes)


def train(capsys, data, exp, conf, *extra):
    """(exit status, stderr) of `avtk train` on data."""
    capsys.readouterr()
    rc = avtk_main(["train", "--config", str(conf), "--train-data", str(data), "--exp", str(exp), *map(str, extra)])
    return rc, capsys.readouterr().err


def error_line(err):
    """The one ERROR line of a failed command (and that there is no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if " ERROR " in line]
    assert len(lines) == 1, err
    return lines[0].split(" ERROR [avtk train] ", 1)[1]


def nothing_written(exp):
    """EXP holds nothing (avtk train may create the directory itself before it reads anything)."""
    return not exp.exists() or not any(exp.iterdir())


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path)


# ------------------------------------------------------------------------------------------------ config

@pytest.mark.parametrize("override, message", [
    ("runtime.epochs=two", "runtime.epochs = 'two': must be an integer"),
    ("runtime.log_interval=0", "runtime.log_interval = 0: must be >= 1"),
    ("optim.lr=-0.1", "optim.lr = -0.1: must be > 0"),
    ("data.crop_seconds=0", "data.crop_seconds = 0: must be > 0"),
    ("data.num_workers=-1", "data.num_workers = -1: must be >= 0"),
    ("runtime.average_last=0", "runtime.average_last = 0: must be >= 1"),
    ("augment.face_flip=1.5", "augment.face_flip = 1.5: must be >= 0 and <= 1"),
    ("optim.lr=.nan", "optim.lr = nan: must be a finite number"),
    ("runtime.amp=fp8", "runtime.amp = 'fp8': must be one of none, bf16, fp16"),
    ("model.encoder_args=[1, 2]", "model.encoder_args = [1, 2]: must be a mapping {key: value}"),
    ("optim=[1, 2]", "optim must be a mapping, not list [1, 2]"),
])
def test_a_bad_override_names_key_value_and_range(capsys, data, tmp_path, override, message):
    exp = tmp_path / "exp"
    rc, err = train(capsys, data, exp, write_conf(tmp_path / "c.yaml"), override)
    assert rc == 1 and error_line(err) == f"override {override!r}: {message}"
    assert nothing_written(exp)


def test_a_bad_config_file_names_the_file(capsys, data, tmp_path):
    conf = write_conf(tmp_path / "c.yaml", optim__lr=-0.1)
    rc, err = train(capsys, data, tmp_path / "exp", conf)
    assert rc == 1 and error_line(err) == f"{conf}: optim.lr = -0.1: must be > 0"
    conf.write_text("- model\n- loss\n")
    rc, err = train(capsys, data, tmp_path / "exp", conf)
    assert rc == 1 and error_line(err) == (f"{conf}: the top level must be a mapping of sections (model, loss, optim, "
                                           "scheduler, data, augment, finetune, runtime, source), not list ['model', 'loss']")
    conf.write_text("runtime: {average_last: 5, keep_last: 2}\n")
    rc, err = train(capsys, data, tmp_path / "exp", conf)
    assert rc == 1 and error_line(err) == (f"{conf}: runtime.average_last = 5: must be <= runtime.keep_last (2): "
                                           "only kept checkpoints can be averaged")
    rc, err = train(capsys, data, tmp_path / "exp", write_conf(tmp_path / "d.yaml"), "optim.lr=[")
    assert rc == 1 and error_line(err) == ("override 'optim.lr=[': the value is not valid YAML (expected the node "
                                           "content, but found '<stream end>' at line 1, column 2)")
    assert nothing_written(tmp_path / "exp")


def test_config_text_bom_accepted_non_utf8_named(capsys, data, tmp_path):
    from avtk.train.config import load_config

    conf = tmp_path / "c.yaml"
    conf.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(TINY).encode())
    assert load_config(conf)["optim"]["lr"] == 0.005
    conf.write_bytes(yaml.safe_dump(TINY).encode() + b"# caf\xe9\n")
    line = yaml.safe_dump(TINY).count("\n") + 1
    rc, err = train(capsys, data, tmp_path / "exp", conf)
    assert rc == 1 and error_line(err) == f"{conf}:{line}: not UTF-8 text (byte 0xe9 at column 6)"


def test_float_keys_take_yaml_exponents():
    from avtk.train.config import load_config

    assert load_config(None, ["optim.lr=1e-3"])["optim"]["lr"] == 0.001  # YAML 1.1 reads 1e-3 as a string


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu(capsys, data, tmp_path):
    rc, err = train(capsys, data, tmp_path / "exp", write_conf(tmp_path / "c.yaml"), "runtime.device=cuda")
    assert rc == 1 and error_line(err) == "runtime.device = cuda: no CUDA device is available on this machine (use auto or cpu)"


# ------------------------------------------------------------------------------------------------ data

def test_first_feature_entry_pointing_to_a_missing_ark(capsys, data, tmp_path):
    lines = (data / "feats.scp").read_text().splitlines()
    lines[0] = "s0-u0 " + str(tmp_path / "gone.ark") + ":12"
    (data / "feats.scp").write_text("\n".join(lines) + "\n")
    rc, err = train(capsys, data, tmp_path / "exp", write_conf(tmp_path / "c.yaml"))
    assert rc == 1 and error_line(err) == (f"utterance s0-u0 ({data}/feats.scp:1): cannot read features "
                                           f"{tmp_path}/gone.ark:12: No such file or directory")
    assert nothing_written(tmp_path / "exp")


def test_non_integer_utt2num_frames(capsys, data, tmp_path):
    text = (data / "utt2num_frames").read_text().replace("s0-u1 60", "s0-u1 6O")
    (data / "utt2num_frames").write_text(text)
    rc, err = train(capsys, data, tmp_path / "exp", write_conf(tmp_path / "c.yaml"))
    assert rc == 1 and error_line(err).startswith(f"{data}/utt2num_frames:2: ")
    assert "'6O'" in error_line(err)


def test_zero_or_stale_utt2num_frames_is_an_error_not_a_skip(capsys, data, tmp_path):
    text = "".join(line.split()[0] + " 0\n" for line in (data / "utt2num_frames").read_text().splitlines())
    (data / "utt2num_frames").write_text(text)
    rc, err = train(capsys, data, tmp_path / "exp", write_conf(tmp_path / "c.yaml"))
    assert rc == 1 and error_line(err) == (f"utterance s0-u0: {data}/utt2num_frames says 0 frames but "
                                           f"{data}/feats.scp:1 has 60: utt2num_frames is stale (write it again "
                                           "with compute-fbank --write-num-frames, or remove it)")
    assert nothing_written(tmp_path / "exp")


def test_empty_utt2spk(capsys, data, tmp_path):
    (data / "utt2spk").write_text("")
    (data / "spk2utt").write_text("")
    rc, err = train(capsys, data, tmp_path / "exp", write_conf(tmp_path / "c.yaml"))
    assert rc == 1 and error_line(err) == f"{data}/utt2spk: no utterances; training classifies at least 2 speakers"


@pytest.mark.parametrize("workers", [0, 1])
def test_features_of_mixed_dimension(capsys, tmp_path, workers):
    """Also from a DataLoader worker process: one line, no traceback."""
    data = make_data(tmp_path, dims={"s3-u1": 40})
    rc, err = train(capsys, data, tmp_path / "exp", write_conf(tmp_path / "c.yaml"), "runtime.epochs=1",
                    f"data.num_workers={workers}")
    assert rc == 1 and error_line(err) == (f"utterance s3-u1 ({data}/feats.scp:8): 40-dimensional features, but "
                                           "s0-u0 has 80: features of mixed dimension")
    assert not (tmp_path / "exp/avg_model.pt").exists()
    assert not (tmp_path / "exp/checkpoints/epoch_001.pt").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_nan_feature_row_stops_training_naming_the_utterance(capsys, tmp_path, workers):
    """Features enter training through the same finiteness rule as every table read (avtk.io.ark)."""
    data = make_data(tmp_path)
    utts, feats = [], {}
    for line in (data / "feats.scp").read_text().splitlines():
        u, where = line.split()
        utts.append(u)
        feats[u] = np.array(kaldiio.load_mat(where))
    feats["s2-u1"][7, 3] = np.nan
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/feats2.ark,{data}/feats.scp") as w:
        for u in utts:
            w[u] = feats[u]
    where = dict(line.split() for line in (data / "feats.scp").read_text().splitlines())["s2-u1"]
    rc, err = train(capsys, data, tmp_path / "exp", write_conf(tmp_path / "c.yaml"), "runtime.epochs=1",
                    f"data.num_workers={workers}")
    line_no = utts.index("s2-u1") + 1
    assert rc == 1 and error_line(err) == (f"utterance s2-u1 ({data}/feats.scp:{line_no}): features {where}: NaN or "
                                           f"infinite value at row 7 (of {FRAMES}), column 3")
    assert not (tmp_path / "exp/avg_model.pt").exists()


def test_validation_trials_all_target_fail_at_start_up(capsys, data, tmp_path):
    write_table(data / "trials", [("s0-u0", "s0-u1", "target"), ("s1-u0", "s1-u1", "target")])
    rc, err = train(capsys, data, tmp_path / "exp", write_conf(tmp_path / "c.yaml"), "--val-trials", data / "trials")
    assert rc == 1 and error_line(err) == (f"{data}/trials: all 2 trials are target; a validation EER needs both "
                                           "target and nontarget trials")
    assert "epoch 1 step" not in err and nothing_written(tmp_path / "exp")


def test_short_feature_utterances_are_skipped_counted_and_listed(capsys, tmp_path):
    data = make_data(tmp_path, frames={"s1-u0": 15})  # 0.15 s < data.min_seconds 0.2
    exp = tmp_path / "exp"
    rc, err = train(capsys, data, exp, write_conf(tmp_path / "c.yaml"), "runtime.epochs=1")
    assert rc == 0, err
    assert (f"skipped 1 of 8 training utterances shorter than data.min_seconds = 0.2 s or without a frame "
            f"(ids in {exp}/train_skipped.txt)") in err
    assert (exp / "train_skipped.txt").read_text() == "s1-u0\n"


def test_training_from_wav_skips_clips_below_the_minimum(capsys, tmp_path):
    """A 10 ms clip is not wrap-padded into a crop: it is skipped (data.min_seconds), counted and listed."""
    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    utts = [f"s{s}-u{i}" for s in range(SPEAKERS) for i in range(PER_SPEAKER)] + ["s0-u9"]
    for u in utts:
        sf.write(tmp_path / f"{u}.wav", rng.normal(0, 0.1, 160 if u == "s0-u9" else 8000).astype(np.float32), 16000)
    write_table(d / "wav.scp", [(u, tmp_path / f"{u}.wav") for u in sorted(utts)])
    write_table(d / "utt2spk", [(u, u.split("-")[0]) for u in sorted(utts)])
    write_table(d / "spk2utt", [(f"s{s}", " ".join(u for u in sorted(utts) if u.startswith(f"s{s}-")))
                                for s in range(SPEAKERS)])
    write_table(d / "utt2dur", [(u, "0.01" if u == "s0-u9" else "0.50") for u in sorted(utts)])
    exp = tmp_path / "exp"
    rc, err = train(capsys, d, exp, write_conf(tmp_path / "c.yaml", data__input="wav"), "runtime.epochs=1")
    assert rc == 0, err
    assert "skipped 1 of 9 training utterances shorter than data.min_seconds = 0.2 s" in err
    assert (exp / "train_skipped.txt").read_text() == "s0-u9\n"
    # Without utt2dur the lengths come from the audio, by the same rule.
    (d / "utt2dur").unlink()
    rc, err = train(capsys, d, exp, write_conf(tmp_path / "c.yaml", data__input="wav"), "runtime.epochs=1")
    assert rc == 0 and (exp / "train_skipped.txt").read_text() == "s0-u9\n"


def test_the_minimum_shares_compute_fbank_rule():
    from avtk.features.fbank import num_frames
    from avtk.train.data import too_short

    assert too_short(0.02, num_frames(320), 0.0)  # under one 25 ms frame: compute-fbank skips it too
    assert not too_short(0.025, num_frames(400), 0.0)
    assert too_short(0.4, 38, 0.5) and not too_short(0.5, 48, 0.5)


# ------------------------------------------------------------------------------------------------ resume

@pytest.fixture
def trained(capsys, data, tmp_path):
    """An experiment of 2 epochs with validation; returns (data, exp, conf)."""
    exp, conf = tmp_path / "exp", write_conf(tmp_path / "c.yaml")
    rc, err = train(capsys, data, exp, conf, "--val-trials", data / "trials")
    assert rc == 0, err
    return data, exp, conf


def test_resume_refuses_a_changed_network_and_names_every_key(capsys, trained):
    data, exp, conf = trained
    record = (exp / "config.yaml").read_bytes()
    net = write_conf(conf.parent / "n.yaml", model__encoder_args={"in_dim": 80, "channels": 24, "embed_dim": 8})
    rc, err = train(capsys, data, exp, net, "--resume", "runtime.epochs=3", "optim.lr=0.5")
    ck = exp / "checkpoints/epoch_002.pt"
    assert rc == 1 and error_line(err) == (
        f"--resume: this config differs from that of {ck} in model.encoder_args: "
        "{'channels': 16, 'embed_dim': 8, 'in_dim': 80} -> {'channels': 24, 'embed_dim': 8, 'in_dim': 80}; "
        "optim.lr: 0.005 -> 0.5; runtime.epochs: 2 -> 3. The network (model.*) cannot change. On resume only these "
        "may change: runtime.epochs, runtime.log_interval, runtime.keep_last, runtime.average_last, runtime.threads, "
        "runtime.val_interval, runtime.val_max_frames, runtime.val_face_frames, runtime.device, "
        "runtime.dist_timeout_minutes, data.num_workers; start a new experiment for the rest")
    assert (exp / "config.yaml").read_bytes() == record and not (exp / "config_history.yaml").exists()
    rc, err = train(capsys, data, exp, conf, "--resume", "optim.lr=0.5")
    assert rc == 1 and error_line(err).startswith(f"--resume: this config differs from that of {ck} in optim.lr: "
                                                  "0.005 -> 0.5. On resume only these may change:")
    assert sorted(os.listdir(exp / "checkpoints")) == ["epoch_001.pt", "epoch_002.pt"]


def test_resume_records_allowed_changes_in_a_history(capsys, trained):
    data, exp, conf = trained
    record = (exp / "config.yaml").read_bytes()
    rc, err = train(capsys, data, exp, conf, "--resume", "--val-trials", data / "trials", "runtime.epochs=3")
    assert rc == 0, err
    assert f"--resume with config changes (recorded in {exp}/config_history.yaml): runtime.epochs: 2 -> 3" in err
    (entry,) = yaml.safe_load((exp / "config_history.yaml").read_text())
    assert entry["resumed_at_epoch"] == 3 and entry["changes"] == {"runtime.epochs": {"from": 2, "to": 3}}
    assert (exp / "config.yaml").read_bytes() == record
    state = torch.load(exp / "checkpoints/epoch_003.pt", map_location="cpu", weights_only=False)
    assert state["config"]["runtime"]["epochs"] == 3
    assert [line.split()[0] for line in (exp / "validation.txt").read_text().splitlines()] == ["1", "2", "3"]


def test_resume_falls_back_past_a_truncated_checkpoint(capsys, trained):
    data, exp, conf = trained
    last = exp / "checkpoints/epoch_002.pt"
    last.write_bytes(last.read_bytes()[:1000])
    rc, err = train(capsys, data, exp, conf, "--resume", "--val-trials", data / "trials")
    assert rc == 0, err
    warning = [line for line in err.splitlines() if " WARNING " in line and str(last) in line]
    assert warning and "cannot read the checkpoint" in warning[0] and "trying the previous epoch's" in warning[0]
    assert f"resumed from {exp}/checkpoints/epoch_001.pt; continuing at epoch 2" in err
    torch.load(last, weights_only=False)  # written again, whole
    assert [line.split()[0] for line in (exp / "validation.txt").read_text().splitlines()] == ["1", "2"]
    for path in (exp / "checkpoints").iterdir():
        path.write_bytes(b"not a checkpoint")
    rc, err = train(capsys, data, exp, conf, "--resume")
    assert rc == 1 and error_line(err) == (f"no readable checkpoint in {exp}/checkpoints: {exp}/checkpoints/"
                                           f"epoch_002.pt, {exp}/checkpoints/epoch_001.pt cannot be read")


def test_resume_redoes_a_validation_lost_to_a_kill(capsys, trained):
    """A kill during epoch 2's validation leaves epoch_002.pt but no line 2 in validation.txt (nor avg_model)."""
    data, exp, conf = trained
    lines = (exp / "validation.txt").read_text().splitlines()
    (exp / "validation.txt").write_text(lines[0] + "\n")
    (exp / "avg_model.pt").unlink()
    rc, err = train(capsys, data, exp, conf, "--resume", "--val-trials", data / "trials")
    assert rc == 0, err
    assert "validation.txt has no line for epoch 2 (interrupted?): validating it now" in err
    assert (exp / "validation.txt").read_text().splitlines() == lines and (exp / "avg_model.pt").exists()


# ------------------------------------------------------------------------------------------------ DDP state

def test_cuda_rng_state_is_per_device_and_survives_fewer_gpus(monkeypatch):
    """Each rank saves its own device's CUDA generator; restoring onto a machine with fewer visible GPUs (an old
    checkpoint's list of every device) takes this device's entry and never indexes past the visible ones."""
    from avtk.train import checkpoint as ckpt

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([i]) for i in range(4)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: calls.append((int(state[0]), device)))

    def set_all(states):  # torch's own: every entry onto the device of its index
        for i, state in enumerate(states):
            if i >= torch.cuda.device_count():
                raise IndexError(f"no CUDA device {i}")
            torch.cuda.set_rng_state(state, i)

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    device = torch.device("cuda", 0)
    state = ckpt.rng_state(device)
    assert int(state["cuda"][0]) == 7
    ckpt.set_rng_state(state, device)
    old = dict(state, cuda=[torch.tensor([i]) for i in range(4)])  # saved on 4 GPUs
    ckpt.set_rng_state(old, device)
    assert calls == [(7, device), (0, device)]


def test_process_group_timeout_is_a_config_key(monkeypatch):
    import datetime

    import torch.distributed as dist

    from avtk.train import distributed

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(seen))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: seen.update(backend=backend, timeout=timeout))
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    distributed.setup("cpu", 240.0)
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(minutes=240)}
    from avtk.train.config import DEFAULTS

    assert DEFAULTS["runtime"]["dist_timeout_minutes"] >= 60


def test_ddp_resume_uses_rank_0s_choice_of_checkpoint(capsys, trained):
    """Two gloo ranks resume from the checkpoint rank 0 picks (here past a truncated last one) and stay equal."""
    import re
    import sys

    from conftest import run

    data, exp, conf = trained
    last = exp / "checkpoints/epoch_002.pt"
    last.write_bytes(last.read_bytes()[:1000])
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "avtk.cli",
                "train", "--config", conf, "--train-data", data, "--exp", exp, "--resume"])
    assert proc.stderr.count(f"resumed from {exp}/checkpoints/epoch_001.pt; continuing at epoch 2") == 2, proc.stderr
    assert proc.stderr.count(f"{last}: cannot read the checkpoint") == 1  # rank 0 alone looked
    sums = dict(re.findall(r"\[rank (\d)\] final weights checksum (\S+)", proc.stderr))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], proc.stderr


# ------------------------------------------------------------------------------------------------ encoder args

@pytest.mark.parametrize("args, message", [
    ({"channels": 0}, "model.encoder_args.channels = 0: must be >= 1"),
    ({"embed_dim": -8}, "model.encoder_args.embed_dim = -8: must be >= 1"),
    ({"channels": 16.5}, "model.encoder_args.channels = 16.5: must be an integer"),
    ({"channels": None}, "model.encoder_args.channels = None: must be an integer, not null"),
    ({"bogus": 3}, "unknown config key 'model.encoder_args.bogus' for encoder ecapa_tdnn "
                   "(known: attention, channels, embed_dim, in_dim, pooled)"),
])
def test_bad_encoder_args_in_the_file_name_the_file_and_key(capsys, data, tmp_path, args, message):
    conf = write_conf(tmp_path / "c.yaml", model__encoder_args={"in_dim": 80, "channels": 16, "embed_dim": 8, **args})
    rc, err = train(capsys, data, tmp_path / "exp", conf)
    assert rc == 1 and error_line(err) == f"{conf}: {message}"
    assert nothing_written(tmp_path / "exp")


def test_every_encoder_argument_has_a_declared_kind():
    import inspect

    from avtk.models import ENCODERS
    from avtk.train.config import ENCODER_ARGS

    for name, cls in ENCODERS.items():
        assert set(inspect.signature(cls).parameters) <= set(ENCODER_ARGS), name


def test_an_override_merges_into_a_mapping(capsys, data, tmp_path):
    exp, conf = tmp_path / "exp", write_conf(tmp_path / "c.yaml")
    rc, err = train(capsys, data, exp, conf, "model.encoder_args.channels=24", "runtime.epochs=1",
                    "runtime.average_last=1")
    assert rc == 0, err
    args = yaml.safe_load((exp / "config.yaml").read_text())["model"]["encoder_args"]
    assert args == {"in_dim": 80, "channels": 24, "embed_dim": 8}
    override = "model.encoder_args.channels.x=3"
    rc, err = train(capsys, data, tmp_path / "exp2", conf, override)
    assert rc == 1 and error_line(err) == (f"override {override!r}: model.encoder_args.channels = 16 is not a "
                                           "mapping, so model.encoder_args.channels.x cannot be set")
    assert nothing_written(tmp_path / "exp2")


def test_resume_falls_back_past_a_checkpoint_with_nan_weights(capsys, trained):
    data, exp, conf = trained
    last = exp / "checkpoints/epoch_002.pt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    state["model"]["encoder.conv1.weight"].view(-1)[:2] = float("nan")
    n = state["model"]["encoder.conv1.weight"].numel()
    torch.save(state, last)
    rc, err = train(capsys, data, exp, conf, "--resume", "--val-trials", data / "trials")
    assert rc == 0, err
    assert (f"WARNING [avtk train] {last}: cannot read the checkpoint (its weights hold NaN or infinite values: 2 of "
            f"the {n} values of encoder.conv1.weight); trying the previous epoch's checkpoint") in err
    assert f"resumed from {exp}/checkpoints/epoch_001.pt; continuing at epoch 2" in err
    state = torch.load(last, map_location="cpu", weights_only=False)  # written again, finite
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())
    assert not (exp / "checkpoints/last_good.pt").exists()
