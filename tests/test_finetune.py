"""avtk train --init-model: fine-tuning a trained network on new speakers (the tiny corpus's test set), with a new
classifier (random, class means, or kept), a frozen encoder and a scaled encoder learning rate; resume; errors."""
import hashlib
import re

import pytest
import torch
import yaml

from test_train import corpus, weights, write_conf  # noqa: F401 (corpus: the shared tiny-corpus fixture)


def encoder_checksum(state):
    """avtk.train.trainer._checksum of the encoder of a network holding the "model" weights `state`."""
    from avtk.models import build_network
    from avtk.train.config import load_config
    from avtk.train.trainer import _checksum

    net = build_network(load_config(None, ["model.encoder_args={in_dim: 80, channels: 32, embed_dim: 16}"])["model"])
    net.load_state_dict(state)
    return _checksum(net.encoder)


def first_losses(stderr):
    """The training loss of each logged step of epoch 1 (log_interval 1)."""
    return [float(x) for x in re.findall(r"epoch 1 step \d+/\d+ lr \S+ loss (\S+)", stderr)]


def run_train(corpus, exp, conf, *extra, data="train"):  # noqa: F811
    """`avtk train` on the tiny corpus's `data` set in this process (avtk.cli.main); asserts it succeeds."""
    from avtk.cli import main

    assert main(["train", "--config", str(conf), "--train-data", str(corpus / "data" / data), "--exp", str(exp),
                 *map(str, extra)]) == 0


@pytest.fixture(scope="module")
def pre(one_thread, corpus, tmp_path_factory):  # noqa: F811
    """A network trained 2 epochs on the tiny corpus's 4 training speakers: the model to fine-tune from."""
    exp = tmp_path_factory.mktemp("pre") / "exp"
    run_train(corpus, exp, write_conf(exp.parent / "c.yaml"))
    return exp


def tune(capsys, corpus, exp, conf, *extra, data="test"):  # noqa: F811
    """(exit status, stderr) of `avtk train` on the tiny corpus's `data` set (default: its 3 test speakers, new to
    `pre`), run in process (avtk.cli.main)."""
    from avtk.cli import main

    capsys.readouterr()
    rc = main(["train", "--config", str(conf), "--train-data", str(corpus / "data" / data), "--exp", str(exp),
               *map(str, extra)])
    return rc, capsys.readouterr().err


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def tuned(one_thread, corpus, pre, tmp_path_factory):  # noqa: F811
    """Two epochs on the 3 test speakers from pre's avg_model.pt: encoder frozen in epoch 1, lr x 0.1 after."""
    exp = tmp_path_factory.mktemp("tuned") / "exp"
    conf = write_conf(exp.parent / "c.yaml", runtime__log_interval=1, finetune__freeze_encoder_epochs=1,
                      optim__encoder_lr_scale=0.1)
    run_train(corpus, exp, conf, "--init-model", pre / "avg_model.pt", data="test")
    return exp, conf


def test_the_encoder_is_loaded_frozen_then_trained_at_a_scaled_lr_and_the_classifier_replaced(pre, tuned):
    exp, _ = tuned
    init = weights(pre / "avg_model.pt")
    first, second = (torch.load(exp / f"checkpoints/epoch_00{e}.pt", map_location="cpu", weights_only=False)
                     for e in (1, 2))
    # loaded and frozen for epoch 1: the encoder's parameters and batch-norm statistics are the file's, bit for bit
    assert encoder_checksum(first["model"]) == encoder_checksum(init)
    assert all(torch.equal(first["model"][k], v) for k, v in init.items())
    # epoch 2 trains it
    assert encoder_checksum(second["model"]) != encoder_checksum(init)
    # the classifier: 3 new speakers (the file's has 4), not the file's
    pre_ckpt = torch.load(pre / "checkpoints/epoch_002.pt", map_location="cpu", weights_only=False)
    assert pre_ckpt["loss"]["weight"].shape == (4, 16) and first["loss"]["weight"].shape == (3, 16)
    assert first["speakers"] == ["id10001", "id10002", "id10003"] and not set(first["speakers"]) & set(pre_ckpt["speakers"])
    # optimiser groups: the encoder at lr 0 while frozen, then at 0.1 x the classifier's
    lrs = [{g["name"]: g["lr"] for g in s["optimizer"]["param_groups"]} for s in (first, second)]
    assert lrs[0]["encoder"] == 0.0 and lrs[0]["head"] > 0
    assert lrs[1]["encoder"] == pytest.approx(0.1 * lrs[1]["head"], rel=1e-12) and lrs[1]["head"] > 0
    # the resolved config records the initial model and its sha256
    ft = yaml.safe_load((exp / "config.yaml").read_text())["finetune"]
    assert ft["init_model"] == str(pre / "avg_model.pt")
    assert ft["init_checksum"] == hashlib.sha256((pre / "avg_model.pt").read_bytes()).hexdigest()


def test_mean_classifier_init_starts_near_the_class_means_and_converges_faster(capsys, corpus, pre, tmp_path):  # noqa: F811
    from avtk.embed import load_model
    from avtk.train.config import load_config
    from avtk.train.data import CropDataset

    losses = {}
    for how in ("random", "mean"):
        # lr 1e-9: the classifier at the end of epoch 1 is its initial one (to 1e-6)
        conf = write_conf(tmp_path / f"{how}.yaml", runtime__epochs=1, runtime__log_interval=1, optim__lr=1e-9,
                          finetune__classifier_init=how, finetune__freeze_encoder_epochs=1)
        rc, err = tune(capsys, corpus, tmp_path / how, conf, "--init-model", pre / "avg_model.pt")
        assert rc == 0, err
        losses[how] = first_losses(err)
    assert "classifier: the mean embeddings of 18 crops of 3 classes" in err
    digest = hashlib.sha256((pre / "avg_model.pt").read_bytes()).hexdigest()
    assert (f"fine-tuning from {pre / 'avg_model.pt'} (sha256 {digest}): network loaded, classifier from class "
            "means, encoder frozen for 1 epoch(s)\n") in err
    # the first steps' loss: the class means start where random rows end up only after training
    assert len(losses["mean"]) == 2 and all(m < 0.5 * r for m, r in zip(losses["mean"], losses["random"])), losses
    # the rows point at each speaker's mean normalised embedding of its epoch-0 crops under the loaded network
    cfg = load_config(tmp_path / "mean.yaml")
    dataset = CropDataset(corpus / "data/test", cfg, 0)
    net, _ = load_model(pre / "avg_model.pt")
    sums = torch.zeros(3, 16)
    with torch.no_grad():
        for i in range(len(dataset)):
            crop, label, _ = dataset.sample(i, 0, augment=False)
            emb = net.embed_features(crop[None])[0]
            sums[label] += emb / emb.norm()
    weight = torch.load(tmp_path / "mean/checkpoints/epoch_001.pt", map_location="cpu",
                        weights_only=False)["loss"]["weight"]
    cos = torch.nn.functional.cosine_similarity(weight, sums, dim=1)
    assert cos.min() > 0.99999, cos


def test_mean_init_with_speed_perturbation_has_a_row_per_speaker_and_speed(capsys, corpus, pre, tmp_path):  # noqa: F811
    conf = write_conf(tmp_path / "c.yaml", runtime__epochs=1, data__input="wav", augment__spec_augment=False,
                      augment__speed_perturb=[1.0, 0.9], finetune__classifier_init="mean",
                      finetune__classifier_init_utts=2)
    rc, err = tune(capsys, corpus, tmp_path / "exp", conf, "--init-model", pre / "avg_model.pt")
    # 3 speakers x 2 utterances x 2 speeds
    assert rc == 0 and "classifier: the mean embeddings of 12 crops of 6 classes" in err, err
    state = torch.load(tmp_path / "exp/checkpoints/epoch_001.pt", map_location="cpu", weights_only=False)
    assert state["loss"]["weight"].shape == (6, 16) and state["speakers"][3].startswith("sp0.9-")


def test_keep_takes_the_checkpoints_classifier_for_the_same_speakers(capsys, corpus, pre, tmp_path):  # noqa: F811
    conf = write_conf(tmp_path / "c.yaml", runtime__epochs=1, optim__lr=1e-9, finetune__classifier_init="keep")
    source = pre / "checkpoints/epoch_002.pt"
    assert tune(capsys, corpus, tmp_path / "exp", conf, "--init-model", source, data="train")[0] == 0
    kept = torch.load(tmp_path / "exp/checkpoints/epoch_001.pt", map_location="cpu",
                      weights_only=False)["loss"]["weight"]
    original = torch.load(source, map_location="cpu", weights_only=False)["loss"]["weight"]
    assert (kept - original).abs().max() < 1e-6
    line = error_of(tune(capsys, corpus, tmp_path / "b", conf, "--init-model", pre / "avg_model.pt", data="train"))
    assert line.startswith(f"finetune.classifier_init = 'keep': {pre / 'avg_model.pt'} holds no classifier "
                           "(avg_model.pt holds only the network")
    line = error_of(tune(capsys, corpus, tmp_path / "c", conf, "--init-model", source))
    assert "classifies 4 classes, the training data 3, first difference at class 0" in line


def test_resume_continues_a_fine_tuning_bit_identically(capsys, corpus, pre, tuned, tmp_path):  # noqa: F811
    reference, conf = tuned
    exp = tmp_path / "exp"
    assert tune(capsys, corpus, exp, conf, "--init-model", pre / "avg_model.pt", "runtime.epochs=1")[0] == 0
    # resumed without --init-model: the run's own, from its checkpoint (the file is not read again)
    rc, err = tune(capsys, corpus, exp, conf, "--resume")
    assert rc == 0 and "resumed from" in err and "fine-tuning from" not in err, err
    a, b = weights(reference / "checkpoints/epoch_002.pt"), weights(exp / "checkpoints/epoch_002.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # with --init-model of another file: refused, naming the key
    line = error_of(tune(capsys, corpus, exp, conf, "--resume", "--init-model", pre / "checkpoints/epoch_002.pt",
                         "runtime.epochs=3"))
    assert line.startswith("--resume: this config differs from that of") and "finetune.init_model: " in line


def error_of(result):
    """The message of the one ERROR line of a run that exited with status 1 (and no traceback)."""
    rc, err = result
    lines = [line for line in err.splitlines() if " ERROR [avtk train] " in line]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0].split(" ERROR [avtk train] ", 1)[1]


def test_a_network_that_does_not_fit_and_other_bad_inputs_are_one_line_errors(capsys, corpus, pre, tmp_path):  # noqa: F811
    model = pre / "avg_model.pt"
    conf = write_conf(tmp_path / "c.yaml", runtime__epochs=1)
    wide = write_conf(tmp_path / "w.yaml", runtime__epochs=1,
                      model__encoder_args={"in_dim": 80, "channels": 64, "embed_dim": 16})
    line = error_of(tune(capsys, corpus, tmp_path / "a", wide, "--init-model", model, "model.cmn=false"))
    assert (f"finetune.init_model {model}: its network does not fit the config: model.cmn: True in the model file, "
            "False in the config; model.encoder_args.channels: 32 in the model file, 64 in the config") in line
    line = error_of(tune(capsys, corpus, tmp_path / "b", conf, "--init-model", tmp_path / "none.pt"))
    assert f"finetune.init_model {tmp_path / 'none.pt'}: no such file" in line
    (tmp_path / "text.pt").write_text("not a model\n")
    line = error_of(tune(capsys, corpus, tmp_path / "c", conf, "--init-model", tmp_path / "text.pt"))
    assert f"{tmp_path / 'text.pt'}: not an avtk model file" in line
    line = error_of(tune(capsys, corpus, tmp_path / "d", conf, "finetune.classifier_init=mean"))
    assert "finetune.classifier_init = 'mean' needs an initial model (avtk train --init-model MODEL" in line
    line = error_of(tune(capsys, corpus, tmp_path / "e", conf, f"finetune.init_model={model}",
                         "finetune.init_checksum=abc"))
    assert "but the config records finetune.init_checksum abc: the file changed since" in line
    line = error_of(tune(capsys, corpus, tmp_path / "f", conf, "optim.encoder_lr_scale=0"))
    assert "optim.encoder_lr_scale = 0: must be > 0" in line


def test_every_large_margin_config_fits_the_network_of_its_base_config():
    """egs/*/conf/X_lm.yaml fine-tunes X.yaml's network (run.sh: --init-model of its avg_model.pt): the same
    model section, margin 0.5, longer crops, a lower lr, the classifier from the class means."""
    from avtk.train.config import load_config
    from avtk.train.finetune import model_misfit
    from conftest import REPO

    pairs = {p: p.with_name(p.name.replace("_lm.yaml", ".yaml")) for p in REPO.glob("egs/*/conf/*_lm.yaml")}
    assert {p.name for p in pairs} == {"ecapa_l_lm.yaml", "resnet34_lm.yaml", "ecapa_mini_lm.yaml"}
    for lm_path, base_path in pairs.items():
        lm, base = load_config(lm_path), load_config(base_path)
        assert model_misfit(base["model"], lm["model"]) == "", lm_path
        assert lm["loss"]["margin"] == 0.5 and lm["loss"]["margin_warmup_epochs"] == 0, lm_path
        assert lm["data"]["crop_seconds"] > base["data"]["crop_seconds"] and lm["optim"]["lr"] < base["optim"]["lr"]
        assert lm["finetune"]["classifier_init"] == "mean" and lm["runtime"]["epochs"] <= 5


def test_two_ddp_ranks_fine_tune_from_rank_0s_class_means_to_identical_weights(corpus, pre, tmp_path):  # noqa: F811
    """Rank 0 alone computes the class means; DDP copies its weights to rank 1 at start, so both end equal."""
    import sys

    from conftest import run

    conf = write_conf(tmp_path / "c.yaml", runtime__epochs=1, finetune__classifier_init="mean")
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "avtk.cli", "train", "--config", conf, "--train-data", corpus / "data/test", "--exp", tmp_path / "exp",
                "--init-model", pre / "avg_model.pt"])
    sums = dict(re.findall(r"\[rank (\d)\] final weights checksum (\S+)", proc.stderr))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], proc.stderr
    assert proc.stderr.count("classifier: the mean embeddings of 18 crops of 3 classes") == 1
    assert (tmp_path / "exp/avg_model.pt").is_file()
