"""Fine-tuning the speaker and face networks through the joint audio-visual network (data.input: av): `avtk
train` with finetune.speaker_model and finetune.face_model, its outputs (avg_model.pt, speaker_model.pt,
face_model.pt) used by `avtk extract-embeddings` and `avtk extract-joint-embeddings`, and the errors of its
config and data.

Marked `recipe` (end-to-end trainings of a speaker, a face and the joint network; about a minute on 2 cores):
run with `python -m pytest -q -m recipe tests`, as CI's second step does."""
import shutil

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from conftest import SMALL_FACE, SMALL_SPEAKER, avtk, write_conf, write_model

pytestmark = pytest.mark.recipe

BASE = {
    "model": {"encoder": "gated_fusion", "encoder_args": {"audio_dim": 16, "face_dim": 16, "hidden": 8}},
    "optim": {"lr": 0.01, "encoder_lr_scale": 0.5},
    "data": {"input": "av", "face_frames": 2, "batch_size": 8, "crop_seconds": 1.0},
    "finetune": {"freeze_encoder_epochs": 1, "classifier_init": "mean", "classifier_init_utts": 2},
    "runtime": {"epochs": 2, "log_interval": 1, "keep_last": 2, "average_last": 1, "seed": 3},
}


def one_error(proc):
    lines = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    """4 training speakers x 4 utterances with fbank features and aligned face frames (one utterance's frame
    directory emptied: no face), small random speaker and face model files, and a 2-epoch av run (epoch 1
    frozen, epoch 2 fine-tuning the networks at half the lr)."""
    root = tmp_path_factory.mktemp("av")
    avtk("make-synthetic-corpus", "--num-train-speakers", 4, "--num-test-speakers", 2, "--videos-per-speaker", 2,
         "--utts-per-video", 2, "--min-duration", 1.5, "--max-duration", 2, "--no-raw-frames", root / "corpus",
         root / "data")
    train = root / "data/train"
    avtk("compute-fbank", f"scp:{train}/wav.scp", f"ark,scp:{root}/feats.ark,{train}/feats.scp")
    frames = dict(line.split(maxsplit=1) for line in (train / "frames.scp").read_text().splitlines())
    faceless = sorted(frames)[1]
    empty = root / "empty_frames"
    empty.mkdir()
    frames[faceless] = str(empty)
    (train / "frames.scp").write_text("".join(f"{u} {p}\n" for u, p in sorted(frames.items())))
    speaker = write_model(root / "speaker.pt", SMALL_SPEAKER)
    face = write_model(root / "face.pt", SMALL_FACE, 1)
    conf = write_conf(root / "av.yaml", BASE, finetune__speaker_model=str(speaker), finetune__face_model=str(face))
    proc = avtk("train", "--config", conf, "--train-data", train, "--exp", root / "exp")
    return {"root": root, "train": train, "speaker": speaker, "face": face, "conf": conf, "exp": root / "exp",
            "faceless": faceless, "log": proc.stderr}


def weights(path, prefix=""):
    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def test_the_networks_are_frozen_then_fine_tuned_and_written_as_model_files_of_their_own(setup):
    exp, log = setup["exp"], setup["log"]
    assert (f"WARNING [avtk train] 1 of 16 training utterances have no face: they train the audio branch only (ids in "
            f"{exp}/train_no_face.txt)") in log
    assert (exp / "train_no_face.txt").read_text() == f"{setup['faceless']}\n"
    assert "classifier: the mean embeddings of 8 crops of 4 classes" in log
    for key, source in (("speaker", setup["speaker"]), ("face", setup["face"])):
        start = weights(source)
        frozen = weights(exp / "checkpoints/epoch_001.pt", f"{key}.")
        tuned = weights(exp / "checkpoints/epoch_002.pt", f"{key}.")
        assert set(frozen) == set(start) == set(tuned)
        # epoch 1: frozen, batch-norm statistics too; epoch 2: trained
        assert all(torch.equal(frozen[k], start[k]) for k in start), key
        assert any(not torch.equal(tuned[k], start[k]) for k in start if tuned[k].is_floating_point()), key
        # EXP/KEY_model.pt: the averaged (here: last) epoch's network, with the model section of its source
        mine = torch.load(exp / f"{key}_model.pt", map_location="cpu", weights_only=False)
        assert all(torch.equal(mine["model"][k], tuned[k]) for k in tuned)
        theirs = torch.load(source, map_location="cpu", weights_only=False)["config"]["model"]
        assert {k: mine["config"]["model"][k] for k in theirs} == theirs
    cfg = yaml.safe_load((exp / "config.yaml").read_text())
    theirs = torch.load(setup["speaker"], map_location="cpu", weights_only=False)["config"]["model"]
    del theirs["speaker_net"], theirs["face_net"]  # a speech network's own are null
    assert cfg["model"]["speaker_net"] == theirs and cfg["model"]["face_net"]["encoder"] == "iresnet18"


def test_the_model_files_embed_what_the_joint_network_computes(setup, tmp_path):
    """extract-embeddings with speaker_model.pt and face_model.pt, then extract-joint-embeddings with avg_model.pt,
    give the embedding that the joint network computes from the same features and frames in one pass."""
    from avtk.face.frames import evenly_spaced, frame_names, read_frame
    from avtk.models.joint import JointNet

    exp, train = setup["exp"], setup["train"]
    avtk("extract-embeddings", "--model", exp / "speaker_model.pt", f"scp:{train}/feats.scp",
         f"ark,scp:{tmp_path}/a.ark,{tmp_path}/a.scp")
    avtk("extract-embeddings", "--model", exp / "face_model.pt", f"scp:{train}/frames.scp",
         f"ark,scp:{tmp_path}/f.ark,{tmp_path}/f.scp")
    assert [line.split()[0] for line in (tmp_path / "f.no_face").read_text().splitlines()] == [setup["faceless"]]
    avtk("extract-joint-embeddings", "--model", exp / "avg_model.pt", "--face-emb", f"scp:{tmp_path}/f.scp",
         f"scp:{tmp_path}/a.scp", f"ark,scp:{tmp_path}/j.ark,{tmp_path}/j.scp")
    got = dict(kaldiio.load_scp(str(tmp_path / "j.scp")))
    blob = torch.load(exp / "avg_model.pt", map_location="cpu", weights_only=False)
    net = JointNet.from_config(blob["config"]["model"])
    net.load_state_dict(blob["model"])
    net.eval()
    feats = dict(kaldiio.load_scp(str(train / "feats.scp")))
    dirs = dict(line.split(maxsplit=1) for line in (train / "frames.scp").read_text().splitlines())
    for utt in (setup["faceless"], sorted(feats)[0], sorted(feats)[-1]):
        names = evenly_spaced(frame_names(utt, dirs[utt]), 5) if frame_names(utt, dirs[utt]) else []  # --num-frames 5
        images = np.stack([read_frame(utt, f"{dirs[utt]}/{n}", 112) for n in names]) if names else \
            np.zeros((1, 112, 112, 3), np.uint8)
        x = torch.from_numpy(np.array(feats[utt][None]))
        with torch.no_grad():
            e = net.encode((net.speaker.normalize(x), net.face.normalize(torch.from_numpy(images))[None],
                            torch.tensor([1.0 if names else 0.0]))).numpy()[0]
        np.testing.assert_allclose(got[utt], e, atol=1e-4, err_msg=utt)  # extraction folds batch norm
    assert np.all(got[setup["faceless"]][16:] == 0)
    # the centring means are those of the fine-tuned networks, not those of the networks the run started from
    start = weights(exp / "checkpoints/epoch_002.pt", "encoder.")
    for name in ("audio_mean", "face_mean"):
        assert not torch.allclose(blob["model"][f"encoder.{name}"], start[name], atol=1e-4), name


def test_resume_accepts_the_run_s_own_config(setup, tmp_path):
    """The resolved config holds model.speaker_net and face_net, filled again from the files on --resume: equal."""
    exp = tmp_path / "exp"
    shutil.copytree(setup["exp"], exp)
    proc = avtk("train", "--config", setup["conf"], "--train-data", setup["train"], "--exp", exp, "--resume")
    assert f"resumed from {exp}/checkpoints/epoch_002.pt; continuing at epoch 3" in proc.stderr


@pytest.mark.parametrize("change, expected", [
    ({"finetune__face_model": None},
     "data.input is av (fine-tuning the speaker and face networks through gated_fusion) but "
     "finetune.face_model is not set: name the avtk model files of both networks"),
    ({"data__input": "embeddings"},
     "config finetune.speaker_model is set but data.input is embeddings"),
    ({"finetune__speaker_model": "FACE"}, "finetune.speaker_model FACE: a face network (iresnet18), not a speech one"),
    ({"finetune__face_model": "MISSING"}, "finetune.face_model: model file MISSING does not exist"),
    ({"model__encoder_args": {"audio_dim": 12, "face_dim": 16}},
     "model.speaker_net embeds 16 dimensions but model.encoder_args.audio_dim is 12"),
])
def test_config_errors_name_the_key_and_file(setup, tmp_path, change, expected):
    conf = yaml.safe_load(setup["conf"].read_text())
    names = {"FACE": str(setup["face"]), "MISSING": str(tmp_path / "missing.pt")}
    change = {k: names.get(v, v) if isinstance(v, str) else v for k, v in change.items()}
    expected = expected.replace("FACE", names["FACE"]).replace("MISSING", names["MISSING"])
    path = write_conf(tmp_path / "c.yaml", conf, **change)
    err = one_error(avtk("train", "--config", path, "--train-data", setup["train"], "--exp", tmp_path / "exp",
                         check=False))
    assert expected in err
    assert not (tmp_path / "exp/config.yaml").exists()


def test_data_errors_are_one_line(setup, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(setup["train"], data)
    (data / "frames.scp").unlink()
    err = one_error(avtk("train", "--config", setup["conf"], "--train-data", data, "--exp", tmp_path / "e",
                         check=False))
    assert f"{data}/frames.scp: missing (data.input is av" in err
    shutil.copy(setup["train"] / "frames.scp", data / "frames.scp")
    err = one_error(avtk("train", "--config", setup["conf"], "--train-data", data, "--exp", tmp_path / "e",
                         "--val-trials", setup["root"] / "data/test/trials", check=False))
    assert "an audio-visual network has no validation during training" in err


def test_a_fresh_run_refuses_to_start_from_a_file_it_would_replace(setup, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(setup["exp"], exp)
    before = (exp / "speaker_model.pt").read_bytes()
    err = one_error(avtk("train", "--config", setup["conf"], "--train-data", setup["train"], "--exp", exp,
                         f"finetune.speaker_model={exp}/speaker_model.pt", check=False))
    assert (f"finetune.speaker_model {exp}/speaker_model.pt: is a file of the run in --exp {exp}, which a fresh run "
            "replaces") in err
    assert (exp / "speaker_model.pt").read_bytes() == before and (exp / "checkpoints/epoch_002.pt").is_file()
