"""Bad inputs to issue 14's commands and API (enroll, identify, score --write-quality, fuse with quality
measures, verify thresholds, avtk.load_model, SpeakerModel, FaceModel, Verifier, Gallery) that once gave a
traceback, a NaN or a silently wrong answer: each kind is now one AvtkError (one ERROR line and exit status 1
for the commands) naming the input, or the right answer. One test per kind, exact messages asserted."""
import numpy as np
import pytest
import torch

import avtk
from avtk.calibration import train_model
from avtk.data.trials import Trials
from avtk.errors import AvtkError
from avtk.identify import Gallery
from avtk.io.ark import open_writer
from avtk.scoring import score_trials
from conftest import SMALL_FACE, SMALL_SPEAKER, write_model
from test_identify import one_error as identify_one_error, run_cli

DIM = 8


def one_error(capsys, *args):
    """The message of the one ERROR line of a command that must fail with exit status 1 and no traceback."""
    return identify_one_error(capsys, *args).split(" ERROR ", 1)[1].split("] ", 1)[1]


def error(call):
    with pytest.raises(AvtkError) as err:
        call()
    return str(err.value)


def write_table(path, table):
    with open_writer(f"ark,scp:{path}.ark,{path}.scp") as writer:
        for key, value in table.items():
            writer[key] = np.asarray(value, np.float32)
    return f"scp:{path}.scp"


@pytest.fixture
def toy(tmp_path):
    """Three speakers along random directions, two enrollment and two test utterances each; trials of every
    test pair."""
    rng = np.random.default_rng(1)
    emb = {}
    for s in "abc":
        axis = rng.normal(size=DIM) * 3
        for i in range(4):
            emb[f"{s}{i}"] = axis + rng.normal(size=DIM)
    (tmp_path / "spk2utt").write_text("a a0 a1\nb b0 b1\nc c0 c1\n")
    test = [k for k in emb if k[1] in "23"]
    (tmp_path / "trials").write_text("".join(f"{e} {t} {'target' if e[0] == t[0] else 'nontarget'}\n"
                                             for i, e in enumerate(test) for t in test[i + 1:]))
    return emb


@pytest.fixture(scope="module")
def models(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("models")
    return {"speaker": avtk.load_model(write_model(root / "ecapa.pt", SMALL_SPEAKER)),
            "face": avtk.load_model(write_model(root / "face.pt", SMALL_FACE, 1)), "root": root}


# ------------------------------------------------------------------------------------------------ embeddings


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_embeddings_of_extreme_magnitude_keep_their_direction(toy, tmp_path, capsys, scale):
    """float32 squares of 1e30 overflow and those of 1e-30 underflow: the norm was inf or 0, so the vector
    scored 0 against everything (score, identify) or -inf (SpeakerModel.score). Its cosines are now those of
    the same vector at a normal scale."""
    scaled = dict(toy, a2=toy["a2"] * scale, b0=toy["b0"] * scale)
    for name, table in (("plain", toy), ("scaled", scaled)):
        spec = write_table(tmp_path / name, table)
        assert run_cli(capsys, "score", "--trials", tmp_path / "trials", spec, tmp_path / f"{name}.txt")[0] == 0
        assert run_cli(capsys, "enroll", "--spk2utt", tmp_path / "spk2utt", spec,
                       f"ark,scp:{tmp_path}/g_{name}.ark,{tmp_path}/g_{name}.scp")[0] == 0
        assert run_cli(capsys, "identify", "--top-k", 3, f"scp:{tmp_path}/g_{name}.scp", spec,
                       tmp_path / f"id_{name}.txt")[0] == 0
    for name in ("", "id_"):
        plain, scaled_lines = ((tmp_path / f"{name}{n}.txt").read_text().split() for n in ("plain", "scaled"))
        assert [w for w in plain if not w[0].isdigit() and w[0] != "-"] == \
            [w for w in scaled_lines if not w[0].isdigit() and w[0] != "-"]
        numbers = [(float(p), float(s)) for p, s in zip(plain, scaled_lines) if p[0].isdigit() or p[0] == "-"]
        assert len(numbers) > 10 and max(abs(p - s) for p, s in numbers) <= 2e-6
    gallery = Gallery.enroll({"a": [toy["a0"], toy["a1"]], "b": toy["b0"]})
    big = Gallery.enroll({"a": [toy["a0"] * scale, toy["a1"]], "b": toy["b0"] * scale})
    assert np.abs(big.models - gallery.models).max() < 1e-6
    assert np.abs(big.identify(toy["a2"] * scale).scores - gallery.identify(toy["a2"]).scores).max() < 1e-6


def test_cosine_of_api_embeddings_of_extreme_magnitude(models):
    speaker = models["speaker"]
    e = np.random.default_rng(0).normal(size=speaker.embed_dim).astype(np.float32)
    f = np.random.default_rng(1).normal(size=speaker.embed_dim).astype(np.float32)
    plain = speaker.score(e, f)
    for scale in (1e30, 1e-30):
        assert speaker.score(e * np.float32(scale), f) == pytest.approx(plain, abs=1e-6)


def test_a_non_finite_mean_is_an_error_not_nan_scores(toy):
    enrollment = {"a": [toy["a0"], toy["a1"]], "b": toy["b0"]}
    mean = np.zeros(DIM)
    mean[3] = np.nan
    assert error(lambda: Gallery.enroll(enrollment, mean=mean)) == (
        "enrollment: the gallery mean has NaN or infinite values (at index 3): no embedding can be centred with it")
    gallery = Gallery(["a", "b"], np.eye(DIM)[:2], mean=np.full(DIM, np.inf))
    assert error(lambda: gallery.identify(toy["a2"])) == (
        "test embeddings: the gallery mean has NaN or infinite values (at index 0): no embedding can be centred "
        "with it")
    assert error(lambda: score_trials(toy, Trials(["a2"], ["b2"]), mean=mean, source="emb")) == (
        "emb: the mean has NaN or infinite values (at index 3): no embedding can be centred with it")


# ------------------------------------------------------------------------------------------------ Gallery API


def test_gallery_api_ids_values_and_options(toy):
    e = [toy["a0"], toy["a1"]]
    gallery = Gallery.enroll({"a": e, "b": toy["b0"]})
    cases = [
        (lambda: Gallery.enroll({1: e, "1": toy["b0"]}),
         "enrollment: speaker ids 1 and '1' are the same text, '1': one speaker, listed twice"),
        (lambda: Gallery.enroll({"a b": e}), "enrollment: speaker id 'a b' cannot be a table key: it holds white "
                                             "space"),
        (lambda: Gallery.enroll({"": e}), "enrollment: speaker id '' cannot be a table key: it is empty"),
        (lambda: Gallery.enroll({"a\u200b": e}), "enrollment: speaker id 'a\\u200b' cannot be a table key: "
                                                 "invisible character U+200B (ZERO WIDTH SPACE) at column 2"),
        (lambda: Gallery.enroll({"a": "abc"}), "enrollment: speaker 'a': embeddings must be numbers (could not "
                                               "convert string to float: 'abc')"),
        (lambda: gallery.identify({"u 1": toy["a2"]}), "test embeddings: utterance id 'u 1' cannot be a table key: "
                                                       "it holds white space"),
        (lambda: gallery.identify(["x"]), "test embeddings: embeddings must be numbers (could not convert string "
                                          "to float: 'x')"),
        (lambda: gallery.identify(toy["a2"], top_k=True), "top_k must be an integer >= 1, got True"),
        (lambda: gallery.identify(toy["a2"], threshold="0.5"), "threshold '0.5': must be a number"),
        (lambda: gallery.identify(toy["a2"], calibration=_calibration(), prior="0.5"), "prior '0.5': must be a "
                                                                                      "number"),
    ]
    assert [error(call) for call, _ in cases] == [message for _, message in cases]
    # modalities as one comma-separated string, as the command takes them
    as_text = gallery.identify(toy["a2"], calibration=_calibration(), modalities="audio")
    as_list = gallery.identify(toy["a2"], calibration=_calibration(), modalities=["audio"])
    assert np.array_equal(as_text.scores, as_list.scores)


def _calibration():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(50), np.zeros(50)]
    return train_model("logreg", ["audio"], (labels * 0.5 + rng.normal(0, 0.2, 100))[:, None], labels)


def test_gallery_api_cohort_is_checked_and_normalised(toy):
    gallery = Gallery.enroll({"a": [toy["a0"], toy["a1"]], "b": toy["b0"], "c": toy["c0"]})
    cohort = np.stack([toy[k] for k in ("a3", "b3", "c3", "c1")])
    unit = cohort / np.linalg.norm(cohort, axis=1, keepdims=True)
    nan = unit.copy()
    nan[1, 2] = np.nan
    cases = [
        (lambda: gallery.identify(toy["a2"], cohort=nan), "cohort: embedding of utterance 'cohort member 2' has "
                                                          "NaN or infinite values"),
        (lambda: gallery.identify(toy["a2"], cohort=np.zeros((3, DIM))),
         "cohort: embedding of utterance 'cohort member 1' is all zeros (no direction, so no cosine) (3 utterances "
         "in all: 'cohort member 1', 'cohort member 2', 'cohort member 3')"),
        (lambda: gallery.identify(toy["a2"], cohort=np.ones((2, 2, DIM))), "the cohort must be an array (members, "
                                                                           "dim), got shape (2, 2, 8)"),
        (lambda: gallery.identify(toy["a2"], cohort=unit[:, :5]), "the cohort has dimension 5 but the gallery has "
                                                                  "8"),
    ]
    assert [error(call) for call, _ in cases] == [message for _, message in cases]
    # cosines need unit cohort rows: raw rows give the AS-Norm scores of their unit vectors
    raw = gallery.identify(toy["a2"], cohort=cohort * 7).scores
    assert np.allclose(raw, gallery.identify(toy["a2"], cohort=unit).scores, atol=1e-6)


# ------------------------------------------------------------------------------------------------ model API


def test_api_inputs_that_crashed(models, tmp_path):
    speaker, face = models["speaker"], models["face"]
    x = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)
    frames = np.random.default_rng(0).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    cases = [
        (lambda: speaker.embed(np.zeros((0, 800), np.float32)), "audio array audio has no channels"),
        (lambda: speaker.embed_batch(str(tmp_path / "a.wav")),
         f"embed_batch: give a list of recordings, not one ({tmp_path}/a.wav): embed embeds one"),
        (lambda: speaker.score(x[:10], x), f"a: a vector of 10 values is neither an embedding of {speaker.path} "
                                           "(dimension 16) nor audio long enough for one feature frame"),
        (lambda: face.embed_faces(tmp_path, n_frames=0), "faces: n_frames 0: give the number of frames to embed, "
                                                         ">= 1"),
        (lambda: face.embed_faces(tmp_path, interval=0), "faces: interval 0: give the seconds between video frames, "
                                                         "> 0"),
        (lambda: speaker.embed_faces(frames), f"{speaker.path} is a speaker model: embed_faces belongs to a face "
                                              "model (load one with avtk.load_model)"),
        (lambda: face.embed(x), f"{face.path} is a face model: embed belongs to a speaker model (load one with "
                                "avtk.load_model)"),
        (lambda: face.embed_batch([x]), f"{face.path} is a face model: embed_batch belongs to a speaker model "
                                        "(load one with avtk.load_model)"),
        (lambda: avtk.Verifier(speaker, prior="0.5"), "--prior '0.5': must be a number in (0, 1)"),
        (lambda: avtk.load_model(speaker.path, device="tpu"), "device 'tpu': give cpu, cuda or cuda:N"),
    ]
    assert [error(call) for call, _ in cases] == [message for _, message in cases]
    # the wrong kind's methods are still no attributes, so duck typing (hasattr) tells the kinds apart
    assert not hasattr(face, "embed_batch") and not hasattr(speaker, "embed_faces")
    with pytest.raises(AttributeError):
        speaker.no_such_method
    # bfloat16 tensors (numpy has no bfloat16) and generators of recordings are taken
    bf16 = torch.from_numpy(x).bfloat16()
    assert np.array_equal(speaker.embed(bf16), speaker.embed(bf16.float().numpy()))
    assert np.array_equal(speaker.embed_batch(a for a in (x, x[:4000])), speaker.embed_batch([x, x[:4000]]))


def test_a_device_torch_cannot_use_is_one_error(models, capsys):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{count}"
    expected = (f"device {device}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}" if count else
                f"device {device}: torch sees no CUDA GPU here (torch {torch.__version__}, CUDA "
                f"{torch.version.cuda or 'not built in'}): use cpu")
    assert error(lambda: avtk.load_model(models["speaker"].path, device=device)) == expected
    x = models["root"] / "x.wav"
    import soundfile

    soundfile.write(x, np.random.default_rng(0).normal(0, 0.1, 8000), 16000)
    assert one_error(capsys, "verify", "--model", models["speaker"].path, "--device", device, x, x) == expected


# ------------------------------------------------------------------------------------------------ outputs


def test_one_file_given_for_two_outputs_is_an_error_and_nothing_is_written(toy, tmp_path, capsys):
    spec = write_table(tmp_path / "emb", toy)
    cohort = write_table(tmp_path / "cohort", {f"x{i}": v for i, v in enumerate(np.random.default_rng(2).normal(
        size=(6, DIM)))})
    out = tmp_path / "out.txt"
    assert one_error(capsys, "score", "--trials", tmp_path / "trials", "--cohort", cohort, "--write-quality", out,
                     spec, out) == f"--write-quality {out} is also the scores file: give each its own name"
    assert run_cli(capsys, "score", "--trials", tmp_path / "trials", spec, tmp_path / "dev.txt")[0] == 0
    assert one_error(capsys, "fuse", "--method", "logreg", "--train-scores", tmp_path / "dev.txt", "--model-out", out,
                     "--out", out, tmp_path / "dev.txt") == (
        f"--model-out {out} is also --out ({out}): one file would be written over the other")
    dev = tmp_path / "dev.txt"
    before = dev.read_text()
    assert one_error(capsys, "fuse", "--method", "logreg", "--train-scores", dev, "--model-out", dev, "--out",
                     tmp_path / "fused.txt", dev) == (
        f"--model-out {dev} is also an input ({dev}): one file would be written over the other")
    assert dev.read_text() == before
    g = f"ark,scp:{tmp_path}/g.mean,{tmp_path}/g.scp"
    assert one_error(capsys, "enroll", "--subtract-mean", "--spk2utt", tmp_path / "spk2utt", spec, g) == (
        f"{g}: {tmp_path}/g.mean is also the name of the gallery's side file {tmp_path}/g.mean (the speakers' "
        "utterance lists and the mean are written beside the table): name the table otherwise")
    assert not out.exists() and not list(tmp_path.glob("g.*")) and not (tmp_path / "fused.txt").exists()


# ------------------------------------------------------------------------------------------------ QMF and verify


def test_cohort_means_outside_the_cosine_range_are_an_error(toy, tmp_path, capsys):
    from avtk.quality import read_cohort_means

    path = tmp_path / "q.cohort"
    path.write_text("a2 0.5\nb2 7\n")
    assert error(lambda: read_cohort_means(path)) == (
        f"{path}:2: cohort mean '7' of utterance 'b2' is not a mean of cosines (they lie in [-1, 1]): not a file "
        "of avtk score --write-quality")
    path.write_text("a2 0.5\nb2 -1.000001\n")  # rounding of a cosine of -1 passes
    assert read_cohort_means(path) == {"a2": 0.5, "b2": -1.000001}


def test_verify_thresholds_must_be_cosines(models, tmp_path, capsys):
    model = models["root"] / "thr.pt"
    model.write_bytes(open(models["speaker"].path, "rb").read())
    before = model.read_bytes()
    assert one_error(capsys, "verify", "--model", model, "--set-threshold", 5) == (
        "threshold 5 (set by hand): verify compares it with a cosine, which lies in [-1, 1], so every pair would get "
        "the same decision; take it from plain cosine scores")
    llrs = tmp_path / "llr.txt"
    llrs.write_text("a b 0.5 target\nc d 3.2 target\ne f -4.0 nontarget\ng h 0.1 nontarget\n")
    assert one_error(capsys, "verify", "--model", model, "--set-threshold-eer", llrs) == (
        f"{llrs}:2: score 3.2 is no cosine (2 scores lie outside [-1, 1]): these are AS-Norm or calibrated scores, "
        "but verify thresholds plain cosines (avtk score without --cohort, --mean-from, --subtract-mean)")
    assert model.read_bytes() == before
    cosines = tmp_path / "cos.txt"
    cosines.write_text("a b 0.5 target\nc d 0.9 target\ne f -0.4 nontarget\ng h 0.1 nontarget\n")
    rc, out, _ = run_cli(capsys, "verify", "--model", model, "--set-threshold-eer", cosines)
    assert rc == 0 and "threshold: 0." in out


def test_an_identification_file_listing_a_candidate_twice_is_an_error(tmp_path, capsys):
    ident = tmp_path / "id.txt"
    ident.write_text("u1 a a 0.9 b 0.5\nu2 b b 0.8 b 0.7\n")
    (tmp_path / "utt2spk").write_text("u1 a\nu2 b\n")
    (tmp_path / "spk2utt").write_text("a e1\nb e2\n")
    assert one_error(capsys, "compute-id-metrics", ident, "--utt2spk", tmp_path / "utt2spk", "--enrolled",
                     tmp_path / "spk2utt", "--rank", 1, 2) == f"{ident}:2: speaker 'b' is a candidate twice"
