"""The joint audio-visual embedding (avtk/models/joint.py): the gated concatenation's algebra, training through
`avtk train` (data.input: embeddings) and embedding through `avtk extract-joint-embeddings`, with utterances
without a face, and the errors of its inputs."""
import shutil

import kaldiio
import numpy as np
import pytest
import torch

from conftest import avtk

AUDIO_DIM, FACE_DIM = 8, 6


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_an_untrained_network_is_the_seeds_mean_fusion_and_the_audio_branch_without_a_face():
    from avtk.models.joint import JointNet, pack

    net = JointNet("gated_fusion", {"audio_dim": AUDIO_DIM, "face_dim": FACE_DIM, "hidden": 5}).eval()
    rng = np.random.default_rng(0)
    ma, mf = rng.normal(size=AUDIO_DIM), rng.normal(size=FACE_DIM)
    net.set_means(ma, mf)
    a, f = rng.normal(size=(4, AUDIO_DIM)), rng.normal(size=(4, FACE_DIM))
    faces = [f[0], f[1], None, None]
    with torch.no_grad():
        e = net(torch.from_numpy(pack(a, faces, FACE_DIM))).numpy()
    assert e.shape == (4, AUDIO_DIM + FACE_DIM) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-6)
    ah, fh = unit(a - ma), unit(f - mf)
    # both faces: (cos_a + cos_f) / 2, the seed's mean fusion of cosines
    np.testing.assert_allclose(e[0] @ e[1], (ah[0] @ ah[1] + fh[0] @ fh[1]) / 2, atol=1e-6)
    # no face: the audio branch exactly, zeros in the face half
    np.testing.assert_allclose(e[2], np.concatenate([ah[2], np.zeros(FACE_DIM)]), atol=1e-6)
    np.testing.assert_allclose(e[2] @ e[3], ah[2] @ ah[3], atol=1e-6)
    # one face: sqrt(w_a) cos_a with w_a = 1/2
    np.testing.assert_allclose(e[0] @ e[2], np.sqrt(0.5) * (ah[0] @ ah[2]), atol=1e-6)


def test_modality_dropout_removes_faces_in_training_only_and_never_both_modalities():
    from avtk.models.joint import GatedFusion, pack

    enc = GatedFusion(AUDIO_DIM, FACE_DIM, hidden=5, face_dropout=0.4, audio_dropout=0.3)
    rng = np.random.default_rng(1)
    rows = torch.from_numpy(pack(rng.normal(size=(4000, AUDIO_DIM)), list(rng.normal(size=(4000, FACE_DIM))), FACE_DIM))
    torch.manual_seed(0)
    e = enc.train()(rows).detach().numpy()
    audio_gone = np.all(e[:, :AUDIO_DIM] == 0, axis=1)
    face_gone = np.all(e[:, AUDIO_DIM:] == 0, axis=1)
    assert not np.any(audio_gone & face_gone)
    # face_dropout of all samples, audio_dropout of those that keep their face
    assert abs(face_gone.mean() - 0.4) < 0.03 and abs(audio_gone.sum() / (~face_gone).sum() - 0.3) < 0.03
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    e_eval = enc.eval()(rows).detach().numpy()
    assert not np.any(np.all(e_eval[:, AUDIO_DIM:] == 0, axis=1))


def write_table(path, table):
    with kaldiio.WriteHelper(f"ark,scp:{path}.ark,{path}.scp") as w:
        for key in sorted(table):
            w[key] = np.asarray(table[key], dtype=np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Embeddings of 6 training speakers x 8 utterances (audio: the whole utterance and 3 crops) and of 4 test
    speakers x 4 utterances: a speaker direction plus noise in each modality. Two training and two test
    utterances have no face."""
    root = tmp_path_factory.mktemp("joint")
    rng = np.random.default_rng(0)

    def data(name, speakers, per, crops):
        d = root / name
        d.mkdir()
        audio, face, utt2spk = {}, {}, {}
        for s in range(speakers):
            ca, cf = rng.normal(size=AUDIO_DIM), rng.normal(size=FACE_DIM)
            for u in range(per):
                utt = f"{name}{s}-{u}"
                utt2spk[utt] = f"{name}{s}"
                audio[utt] = ca + 0.5 * rng.normal(size=(1 + crops, AUDIO_DIM)) if crops else ca + 0.5 * rng.normal(size=AUDIO_DIM)
                face[utt] = cf + 0.5 * rng.normal(size=FACE_DIM)
        gone = sorted(face)[1:3]
        for utt in gone:
            del face[utt]
        (d / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in sorted(utt2spk.items())))
        write_table(d / "audio_emb", audio)
        write_table(d / "face_emb", face)
        return d, gone

    train, train_gone = data("spk", 6, 8, 3)
    test, test_gone = data("tst", 4, 4, 0)
    conf = root / "joint.yaml"
    conf.write_text(f"""model:
  encoder: gated_fusion
  encoder_args: {{audio_dim: {AUDIO_DIM}, face_dim: {FACE_DIM}, hidden: 8, face_dropout: 0.3}}
optim: {{name: adam, lr: 0.01}}
scheduler: {{name: exponential, gamma: 1.0}}
data: {{batch_size: 16}}
augment: {{spec_augment: false}}
runtime: {{epochs: 3, seed: 0, log_interval: 3, keep_last: 2, average_last: 2}}
""")
    return root, train, train_gone, test, test_gone, conf


@pytest.fixture(scope="module")
def trained(corpus):
    root, train, _, _, _, conf = corpus
    proc = avtk("train", "--config", conf, "--train-data", train, "--exp", root / "exp")
    return root / "exp", proc


def test_train_on_embeddings_writes_a_model_and_its_config(corpus, trained):
    exp, proc = trained
    assert (f"WARNING [avtk train] 2 of 48 training utterances have no face: they train the audio branch only (ids in "
            f"{exp}/train_no_face.txt)") in proc.stderr
    assert len((exp / "train_no_face.txt").read_text().split()) == 2
    assert "training gated_fusion on 48 utterances of 6 speakers, epochs 1-3, 3 steps/epoch" in proc.stderr
    assert (exp / "avg_model.pt").is_file()
    import yaml

    cfg = yaml.safe_load((exp / "config.yaml").read_text())
    assert cfg["data"]["input"] == "embeddings" and cfg["model"]["encoder"] == "gated_fusion"
    # the training means are in the model: the first utterances' whole rows, not their crops
    blob = torch.load(exp / "avg_model.pt", weights_only=False)
    audio = kaldiio.load_scp(str(corpus[1] / "audio_emb.scp"))
    want = np.mean([np.asarray(v)[0] for v in audio.values()], axis=0)
    np.testing.assert_allclose(blob["model"]["encoder.audio_mean"].numpy(), want, atol=1e-5)


def test_extract_joint_embeddings_flags_utterances_without_a_face(corpus, trained):
    root, _, _, test, test_gone, _ = corpus
    exp, _ = trained
    out = root / "emb"
    proc = avtk("extract-joint-embeddings", "--model", exp / "avg_model.pt", "--face-emb", f"scp:{test}/face_emb.scp",
                f"scp:{test}/audio_emb.scp", f"ark,scp:{out}.ark,{out}.scp")
    emb = kaldiio.load_scp(f"{out}.scp")
    assert len(emb) == 16
    assert (root / "emb.no_face").read_text() == "".join(f"{u} no_face\n" for u in test_gone)
    assert f"2 of 16 utterances have no face embedding: embedded by the audio branch (listed in {root}/emb.no_face)" in proc.stderr
    for utt, e in emb.items():
        assert abs(np.linalg.norm(e) - 1) < 1e-5
        assert np.all(e[AUDIO_DIM:] == 0) == (utt in test_gone)
    # scored like any other embeddings; the same speaker scores higher than another on average
    trials = root / "trials"
    keys = sorted(emb)
    trials.write_text("".join(f"{a} {b} {'target' if a[:4] == b[:4] else 'nontarget'}\n"
                              for i, a in enumerate(keys) for b in keys[i + 1:]))
    avtk("score", "--trials", trials, f"scp:{out}.scp", root / "scores")
    lines = [line.split() for line in (root / "scores").read_text().splitlines()]
    target = np.mean([float(s) for _, _, s, lab in lines if lab == "target"])
    nontarget = np.mean([float(s) for _, _, s, lab in lines if lab == "nontarget"])
    assert target > nontarget + 0.3


def one_error(proc):
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_bad_inputs_are_one_error_line(corpus, trained, tmp_path):
    import shutil

    root, train, _, test, _, conf = corpus
    exp, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(train, bad)
    (bad / "face_emb.scp").unlink()
    err = one_error(avtk("train", "--config", conf, "--train-data", bad, "--exp", tmp_path / "e1", check=False))
    assert f"{bad}/face_emb.scp: missing (data.input is embeddings" in err
    shutil.copy(train / "face_emb.scp", bad / "face_emb.scp")
    lines = (bad / "audio_emb.scp").read_text().splitlines()
    (bad / "audio_emb.scp").write_text("\n".join(lines[1:]) + "\n")
    err = one_error(avtk("train", "--config", conf, "--train-data", bad, "--exp", tmp_path / "e2", check=False))
    assert f"{bad}/audio_emb.scp: no entry for 1 utterances of utt2spk, e.g. {lines[0].split()[0]}" in err
    err = one_error(avtk("train", "--config", conf, "--train-data", train, "--exp", tmp_path / "e3",
                         "model.encoder_args.face_dim=5", check=False))
    assert f"{train}/face_emb.scp holds 6-dimensional embeddings but model.encoder_args.face_dim is 5" in err
    err = one_error(avtk("train", "--config", conf, "--train-data", train, "--exp", tmp_path / "e4",
                         "data.input=feats", check=False))
    assert "data.input is feats but model.encoder gated_fusion is an audio-visual encoder" in err
    err = one_error(avtk("train", "--config", conf, "--train-data", train, "--exp", tmp_path / "e5",
                         "model.encoder_args.face_dropout=1.0", check=False))
    assert "model.encoder_args.face_dropout" in err and "1.0" in err
    (tmp_path / "trials").write_text("tst0-0 tst0-1 target\ntst0-0 tst1-1 nontarget\n")
    err = one_error(avtk("train", "--config", conf, "--train-data", train, "--exp", tmp_path / "e6",
                         "--val-trials", tmp_path / "trials", check=False))
    assert "an audio-visual network has no validation during training" in err
    # extraction: faces of another dimension, speaker embeddings of another dimension
    write_table(tmp_path / "face5", {"tst0-0": np.ones(5)})
    err = one_error(avtk("extract-joint-embeddings", "--model", exp / "avg_model.pt", "--face-emb",
                         f"scp:{tmp_path}/face5.scp", f"scp:{test}/audio_emb.scp", f"ark:{tmp_path}/o.ark",
                         "--no-face", tmp_path / "nf", check=False))
    assert f"utterance tst0-0: a face embedding of shape (5,), but {exp}/avg_model.pt takes (6,)" in err
    write_table(tmp_path / "audio7", {"tst0-0": np.ones(7)})
    err = one_error(avtk("extract-joint-embeddings", "--model", exp / "avg_model.pt", "--face-emb",
                         f"scp:{test}/face_emb.scp", f"scp:{tmp_path}/audio7.scp", f"ark,scp:{tmp_path}/o.ark,{tmp_path}/o.scp",
                         check=False))
    assert "utterance tst0-0: speaker embeddings of dimension 7" in err
    assert not (tmp_path / "o.scp").exists() and not (tmp_path / "o.no_face").exists()


def test_the_speech_and_face_commands_refuse_a_joint_model(corpus, trained, tmp_path):
    root, _, _, test, _, _ = corpus
    exp, _ = trained
    err = one_error(avtk("extract-embeddings", "--model", exp / "avg_model.pt", f"scp:{test}/audio_emb.scp",
                         f"ark:{tmp_path}/o.ark", check=False))
    assert f"{exp}/avg_model.pt: a joint audio-visual network (gated_fusion) embeds speaker and face embeddings" in err


def test_outputs_that_collide_with_each_other_or_an_input_are_refused_and_nothing_is_written(corpus, trained, tmp_path):
    root, _, _, test, _, _ = corpus
    exp, _ = trained
    model = ["--model", exp / "avg_model.pt", "--face-emb", f"scp:{test}/face_emb.scp"]
    before = (test / "face_emb.scp").read_text()
    o = tmp_path / "o"
    for extra, out, named in (
            (["--no-face", f"{o}.scp"], f"ark,scp:{o}.ark,{o}.scp", f"{o}.scp: is written twice by this command"),
            ([], f"ark,scp:{o}.ark,{o}.no_face", f"{o}.no_face: is written twice by this command"),
            (["--no-face", f"{o}.ark"], f"ark:{o}.ark", f"{o}.ark: is written twice by this command"),
            (["--no-face", f"{o}.ark"], f"ark,scp:{o}.ark,{o}.scp", f"{o}.ark: is written twice by this command"),
            (["--no-face", test / "face_emb.scp"], f"ark,scp:{o}.ark,{o}.scp",
             f"{test}/face_emb.scp: is also an input of this command"),
            (["--no-face", f"{o}.nf"], f"ark,scp:{o}.ark,{test}/audio_emb.scp",
             f"{test}/audio_emb.scp: is also an input of this command")):
        err = one_error(avtk("extract-joint-embeddings", *model, *extra, f"scp:{test}/audio_emb.scp", out, check=False))
        assert named in err, (extra, out, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())
    assert (test / "face_emb.scp").read_text() == before
    assert len(kaldiio.load_scp(str(test / "audio_emb.scp"))) == 16


def test_degenerate_embeddings_are_errors_naming_the_utterance(corpus, trained, tmp_path):
    import shutil

    root, train, _, test, _, conf = corpus
    exp, _ = trained
    model = ["--model", exp / "avg_model.pt", "--face-emb", f"scp:{test}/face_emb.scp"]
    # a double beyond float32's range is infinite in avtk's float32 computations
    import kaldiio as k

    with k.WriteHelper(f"ark,scp:{tmp_path}/big64.ark,{tmp_path}/big64.scp") as w:
        w["tst0-0"] = np.full(AUDIO_DIM, 1e300, dtype=np.float64)
    err = one_error(avtk("extract-joint-embeddings", *model, f"scp:{tmp_path}/big64.scp", f"ark:{tmp_path}/o.ark",
                         "--no-face", tmp_path / "nf", check=False))
    assert "key 'tst0-0'" in err and "value beyond float32's range (avtk computes in float32) at index 0" in err
    # a 0-row matrix; a speaker embedding equal to the network's training mean (no direction after centring)
    with k.WriteHelper(f"ark,scp:{tmp_path}/zero.ark,{tmp_path}/zero.scp") as w:
        w["tst0-0"] = np.zeros((0, AUDIO_DIM), dtype=np.float32)
    err = one_error(avtk("extract-joint-embeddings", *model, f"scp:{tmp_path}/zero.scp", f"ark:{tmp_path}/o.ark",
                         "--no-face", tmp_path / "nf", check=False))
    assert f"scp:{tmp_path}/zero.scp: utterance 'tst0-0': an empty embedding of shape (0, {AUDIO_DIM})" in err
    mean = torch.load(exp / "avg_model.pt", weights_only=False)["model"]["encoder.audio_mean"].numpy()
    write_table(tmp_path / "mean", {"tst0-1": mean})  # tst0-1 has no face: its embedding would be all zeros
    err = one_error(avtk("extract-joint-embeddings", *model, f"scp:{tmp_path}/mean.scp", f"ark:{tmp_path}/o.ark",
                         "--no-face", tmp_path / "nf", check=False))
    assert "tst0-1" in err and "all zeros" in err
    assert not (tmp_path / "o.ark").exists() and not (tmp_path / "nf").exists()
    # training: an all-zero face embedding, a utt2spk line of three fields
    bad = tmp_path / "bad"
    shutil.copytree(train, bad)
    faces = {u: np.asarray(v) for u, v in kaldiio.load_scp(str(train / "face_emb.scp")).items()}
    first = sorted(faces)[0]
    faces[first] = np.zeros(FACE_DIM)
    write_table(bad / "face_emb", faces)
    err = one_error(avtk("train", "--config", conf, "--train-data", bad, "--exp", tmp_path / "e1", check=False))
    assert f"{bad}/face_emb.scp" in err and first in err and "all zeros" in err
    shutil.copy(train / "face_emb.scp", bad / "face_emb.scp")
    lines = (bad / "utt2spk").read_text().splitlines()
    lines[1] = lines[1].replace(" ", " extra ", 1)
    (bad / "utt2spk").write_text("\n".join(lines) + "\n")
    err = one_error(avtk("train", "--config", conf, "--train-data", bad, "--exp", tmp_path / "e2", check=False))
    assert f"{bad}/utt2spk:2: malformed line: expected exactly 2 fields" in err


def test_a_joint_model_is_not_exported(corpus, trained, tmp_path):
    exp, _ = trained
    err = one_error(avtk("export", "--model", exp / "avg_model.pt", tmp_path / "x.pt", check=False))
    assert "a joint audio-visual network (gated_fusion) is not exported" in err
    assert not (tmp_path / "x.pt").exists()


def test_zero_or_corrupted_inputs_are_refused_not_embedded_as_minus_the_training_mean(corpus, trained, tmp_path):
    """A zero speaker or face embedding (the network would centre it into minus its training mean, a confident
    wrong embedding) or one far off the others' norm is one error naming its table and utterance; identical
    training embeddings (centring leaves nothing) are refused by training."""
    root, train, _, test, test_gone, conf = corpus
    exp, _ = trained
    audio = dict(kaldiio.load_scp(str(test / "audio_emb.scp")))
    face = dict(kaldiio.load_scp(str(test / "face_emb.scp")))
    victim = sorted(face)[0]
    cases = [("a_zero", {**audio, victim: np.zeros(AUDIO_DIM)}, face, "audio", "is all zeros"),
             ("f_zero", audio, {**face, victim: np.zeros(FACE_DIM)}, "face", "is all zeros"),
             ("a_tiny", {**audio, victim: audio[victim] * 1e-25}, face, "audio", "more than 10000 times off"),
             ("f_huge", audio, {**face, victim: face[victim] * 1e25}, "face", "more than 10000 times off")]
    for name, a, f, side, what in cases:
        write_table(tmp_path / f"{name}_a", a)
        write_table(tmp_path / f"{name}_f", f)
        table = f"scp:{tmp_path}/{name}_{side[0]}.scp"
        err = one_error(avtk("extract-joint-embeddings", "--model", exp / "avg_model.pt", "--face-emb",
                             f"scp:{tmp_path}/{name}_f.scp", f"scp:{tmp_path}/{name}_a.scp",
                             f"ark,scp:{tmp_path}/{name}.ark,{tmp_path}/{name}.scp", check=False))
        assert f"{table}: embedding of utterance '{victim}' " in err and what in err, (name, err)
        assert not (tmp_path / f"{name}.scp").exists() and not (tmp_path / f"{name}.no_face").exists()
    ident = tmp_path / "ident"
    shutil.copytree(train, ident)
    keys = list(kaldiio.load_scp(str(train / "audio_emb.scp")))
    write_table(ident / "audio_emb", {u: np.tile(np.arange(1.0, AUDIO_DIM + 1), (4, 1)) for u in keys})
    err = one_error(avtk("train", "--config", conf, "--train-data", ident, "--exp", tmp_path / "e", check=False))
    assert f"{ident}/audio_emb.scp: embedding of utterance '{keys[0]}' is all zeros once the mean is subtracted" in err
