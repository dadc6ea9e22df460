"""Speaker identification: enroll, identify and compute-id-metrics, run as users run them, against answers
computed here independently (numpy cosines, sklearn's roc_curve for the open-set rates)."""
import json
import math

import kaldiio
import numpy as np
import pytest
import yaml

from avtk import cli
from avtk.identify import UNKNOWN, Gallery, read_identification, top_candidates
from avtk.io.ark import open_writer
from avtk.metrics import dir_at_far, open_set_rates, rank_accuracy
from conftest import avtk

DIM = 8


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write_table(path, table):
    """A binary ark/scp of {key: vector}; returns the scp rspecifier."""
    with open_writer(f"ark,scp:{path}.ark,{path}.scp") as writer:
        for key, value in table.items():
            writer[key] = np.asarray(value, np.float32)
    return f"scp:{path}.scp"


def run_cli(capsys, *args):
    """(exit status, stdout, stderr) of `avtk ARGS` run in this process through avtk.cli.main."""
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(capsys, *args):
    """The one ERROR line of a command that must fail with exit status 1 and no traceback."""
    rc, _, err = run_cli(capsys, *args)
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert rc == 1 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def toy(tmp_path):
    """Four speakers along four random directions; two enrollment sessions each (a, b enrolled twice), test
    utterances near their speaker's direction; `x` is a speaker never enrolled."""
    rng = np.random.default_rng(0)
    axes = {s: rng.normal(size=DIM) * 3 for s in "abcdx"}
    emb = {}
    for s, axis in axes.items():
        for i in range(3):
            emb[f"{s}{i}"] = axis + rng.normal(size=DIM)
    spk2utt = tmp_path / "spk2utt"
    spk2utt.write_text("a a0 a1\nb b0 b1\nc c0\nd d0\n")
    test = {k: v for k, v in emb.items() if k not in {"a0", "a1", "b0", "b1", "c0", "d0"}}
    return {"emb": emb, "all": write_table(tmp_path / "emb", emb), "test": write_table(tmp_path / "test", test),
            "test_table": test, "spk2utt": spk2utt, "enrolled": {"a": ["a0", "a1"], "b": ["b0", "b1"],
                                                                  "c": ["c0"], "d": ["d0"]}}


def oracle(emb, enrolled, test, mean=None):
    """Speaker models and the (test, speaker) cosine matrix, computed here in float64."""
    mean = np.zeros(DIM) if mean is None else mean
    speakers = list(enrolled)
    models = np.stack([unit(np.stack([emb[u] - mean for u in enrolled[s]])).mean(0) for s in speakers])
    keys = list(test)
    scores = unit(np.stack([test[k] - mean for k in keys])) @ unit(models).T
    return speakers, models, keys, scores


def parse(path):
    return {line.split()[0]: line.split()[1:] for line in path.read_text().splitlines()}


# ------------------------------------------------------------------------------------------------ synthetic gallery


def test_enroll_and_identify_match_numpy_cosines(toy, tmp_path, capsys):
    mean = np.mean(np.stack(list(toy["emb"].values())), 0)
    rc, _, err = run_cli(capsys, "enroll", "--spk2utt", toy["spk2utt"], "--subtract-mean", toy["all"],
                         f"ark,scp:{tmp_path}/g.ark,{tmp_path}/g.scp")
    assert rc == 0 and "enrolled 4 speakers from 6 utterances" in err
    assert (tmp_path / "g.spk2utt").read_text() == "a a0 a1\nb b0 b1\nc c0\nd d0\n"
    assert np.allclose(kaldiio.load_ark(str(tmp_path / "g.mean")).__next__()[1], mean, atol=1e-6)
    speakers, models, keys, scores = oracle(toy["emb"], toy["enrolled"], toy["test_table"], mean)
    stored = dict(kaldiio.load_scp(str(tmp_path / "g.scp")))
    assert list(stored) == speakers
    assert np.allclose(np.stack([stored[s] for s in speakers]), models, atol=1e-6)  # not renormalised

    out = tmp_path / "id.txt"
    assert run_cli(capsys, "identify", "--top-k", 3, f"scp:{tmp_path}/g.scp", toy["test"], out)[0] == 0
    got = parse(out)
    assert list(got) == keys
    for i, key in enumerate(keys):
        order = np.argsort(-scores[i], kind="stable")[:3]
        fields = got[key]
        assert fields[0] == speakers[order[0]]  # closed set: the decision is the top-1 speaker
        assert fields[1::2] == [speakers[j] for j in order]
        assert np.allclose([float(v) for v in fields[2::2]], scores[i, order], atol=2e-6)
    # every enrolled speaker's own test utterances are found at rank 1
    assert all(got[k][0] == k[0] for k in keys if k[0] != "x")


def test_gallery_api_enrolls_arrays_and_decides_open_set(toy):
    emb = toy["emb"]
    gallery = Gallery.enroll({s: [emb[u] for u in utts] for s, utts in toy["enrolled"].items()})
    speakers, models, keys, scores = oracle(emb, toy["enrolled"], toy["test_table"])
    assert gallery.speakers == speakers and np.allclose(gallery.models, models, atol=1e-6)
    result = gallery.identify(np.stack([emb[k] for k in keys]), top_k=2, threshold=0.9)
    assert result.utts == [str(i) for i in range(len(keys))]
    assert np.allclose(result.scores, -np.sort(-scores, axis=1)[:, :2], atol=2e-6)
    best = scores.max(1)
    want = [speakers[int(np.argmax(r))] if b >= 0.9 else UNKNOWN for r, b in zip(scores, best)]
    assert result.decisions == want
    assert UNKNOWN in want and any(w != UNKNOWN for w in want)  # the threshold separates some of each
    one = gallery.identify(emb["a2"], top_k=1)  # a single vector
    assert one.speakers == [["a"]] and one.decisions == ["a"]


def test_as_norm_identification_matches_numpy(toy, tmp_path, capsys):
    rng = np.random.default_rng(1)
    cohort = {f"k{i}": rng.normal(size=DIM) * 3 for i in range(12)}
    cohort_spec = write_table(tmp_path / "cohort", cohort)
    run_cli(capsys, "enroll", "--spk2utt", toy["spk2utt"], toy["all"], f"ark,scp:{tmp_path}/g.ark,{tmp_path}/g.scp")
    out = tmp_path / "id.txt"
    rc, _, err = run_cli(capsys, "identify", "--top-k", 4, "--cohort", cohort_spec, "--top-n", 5,
                         f"scp:{tmp_path}/g.scp", toy["test"], out)
    assert rc == 0, err
    speakers, models, keys, raw = oracle(toy["emb"], toy["enrolled"], toy["test_table"])
    c = unit(np.stack(list(cohort.values())))

    def stats(x):
        top = np.sort(unit(x) @ c.T, axis=1)[:, -5:]
        return top.mean(1), top.std(1, ddof=1)

    mu_s, sd_s = stats(models)
    mu_t, sd_t = stats(np.stack([toy["test_table"][k] for k in keys]))
    want = ((raw - mu_t[:, None]) / sd_t[:, None] + (raw - mu_s[None]) / sd_s[None]) / 2
    got = parse(out)
    for i, key in enumerate(keys):
        fields = got[key]
        idx = [speakers.index(s) for s in fields[1::2]]
        assert sorted(idx) == [0, 1, 2, 3]
        assert np.allclose([float(v) for v in fields[2::2]], want[i, idx], atol=1e-4)


def test_calibration_gives_llrs_and_an_unknown_decision_at_the_bayes_threshold(toy, tmp_path, capsys):
    model = tmp_path / "cal.yaml"
    model.write_text(yaml.safe_dump({"method": "logreg", "modalities": ["audio"], "weights": [6.0],
                                     "bias": -3.0, "prior": 0.5}))
    run_cli(capsys, "enroll", "--spk2utt", toy["spk2utt"], toy["all"], f"ark,scp:{tmp_path}/g.ark,{tmp_path}/g.scp")
    out = tmp_path / "id.txt"
    rc, _, err = run_cli(capsys, "identify", "--top-k", 1, "--calibration", model, "--prior", 0.2,
                         f"scp:{tmp_path}/g.scp", toy["test"], out)
    assert rc == 0, err
    speakers, _, keys, raw = oracle(toy["emb"], toy["enrolled"], toy["test_table"])
    threshold = math.log(0.8 / 0.2)
    got = parse(out)
    for i, key in enumerate(keys):
        llr = 6.0 * raw[i].max() - 3.0
        assert float(got[key][2]) == pytest.approx(llr, abs=1e-5)
        assert got[key][0] == (speakers[int(np.argmax(raw[i]))] if llr >= threshold else UNKNOWN)
    decided = [v[0] for v in got.values()]
    assert UNKNOWN in decided and set(decided) - {UNKNOWN}
    assert f"decided {UNKNOWN} at threshold {threshold:.4f}" in err


def test_fused_identification_is_the_mean_of_cosines_with_missing_faces_left_to_audio(toy, tmp_path, capsys):
    rng = np.random.default_rng(2)
    face = {k: v + rng.normal(size=DIM) for k, v in toy["emb"].items()}
    del face["c0"], face["a2"]  # speaker c enrolled without a face; test utterance a2 without one
    face_all = write_table(tmp_path / "face", face)
    face_test = write_table(tmp_path / "face_test", {k: v for k, v in face.items() if k in toy["test_table"]})
    run_cli(capsys, "enroll", "--spk2utt", toy["spk2utt"], toy["all"], f"ark,scp:{tmp_path}/g.ark,{tmp_path}/g.scp")
    rc, _, err = run_cli(capsys, "enroll", "--spk2utt", toy["spk2utt"], "--allow-missing", face_all,
                         f"ark,scp:{tmp_path}/f.ark,{tmp_path}/f.scp")
    assert rc == 0 and "speakers have none left and are not enrolled: 'c'" in err
    assert (tmp_path / "f.spk2utt").read_text() == "a a0 a1\nb b0 b1\nd d0\n"
    out = tmp_path / "id.txt"
    rc, _, err = run_cli(capsys, "identify", "--top-k", 4, "--face-gallery", f"scp:{tmp_path}/f.scp",
                         "--face-test", face_test, f"scp:{tmp_path}/g.scp", toy["test"], out)
    assert rc == 0, err
    assert "fused: 8 of 9 test utterances have a face, 3 of 4 speakers a face model" in err
    speakers, _, keys, audio = oracle(toy["emb"], toy["enrolled"], toy["test_table"])
    fenrolled = {s: u for s, u in toy["enrolled"].items() if s != "c"}
    fspeakers, _, fkeys, fscores = oracle(face, fenrolled, {k: face[k] for k in keys if k in face})
    got = parse(out)
    for i, key in enumerate(keys):
        fields = got[key]
        for spk, value in zip(fields[1::2], map(float, fields[2::2])):
            a = audio[i, speakers.index(spk)]
            if key in fkeys and spk in fspeakers:
                a = (a + fscores[fkeys.index(key), fspeakers.index(spk)]) / 2
            assert value == pytest.approx(a, abs=2e-6), (key, spk)


def test_gallery_with_api_models_equals_the_gallery_of_their_embeddings(tmp_path, one_thread):
    api = pytest.importorskip("avtk.api")  # avtk.load_model's speaker and face models
    import soundfile

    from conftest import SMALL_FACE, SMALL_SPEAKER, write_model

    speaker = api.load_model(write_model(tmp_path / "speaker.pt", SMALL_SPEAKER))
    face = api.load_model(write_model(tmp_path / "face.pt", SMALL_FACE))
    rng = np.random.default_rng(4)
    wavs = {}
    for name in ("a1", "a2", "b1", "t1", "t2"):
        wavs[name] = tmp_path / f"{name}.wav"
        soundfile.write(wavs[name], rng.normal(0, 0.1, 8000).astype(np.float32), 16000)
    faces = {name: rng.integers(0, 256, (1, 112, 112, 3), dtype=np.uint8) for name in ("a", "b", "t1")}

    by_model = Gallery.enroll({"a": [wavs["a1"], wavs["a2"]], "b": wavs["b1"]}, model=speaker)
    by_array = Gallery.enroll({"a": speaker.embed_batch([wavs["a1"], wavs["a2"]]), "b": speaker.embed(wavs["b1"])})
    assert np.allclose(by_model.models, by_array.models, atol=1e-6)
    face_gallery = Gallery.enroll({"a": faces["a"], "b": [faces["b"]]}, model=face)
    assert np.allclose(face_gallery.models, Gallery.enroll(
        {"a": face.embed_faces(faces["a"]), "b": face.embed_faces(faces["b"])}).models, atol=1e-6)

    got = by_model.identify({"t1": wavs["t1"], "t2": wavs["t2"]}, top_k=2, model=speaker, face_gallery=face_gallery,
                            face={"t1": faces["t1"]}, face_model=face)
    want = by_array.identify({"t1": speaker.embed(wavs["t1"]), "t2": speaker.embed(wavs["t2"])}, top_k=2,
                             face_gallery=face_gallery, face={"t1": face.embed_faces(faces["t1"])})
    assert got.utts == want.utts == ["t1", "t2"] and got.speakers == want.speakers
    assert np.allclose(got.scores, want.scores, atol=1e-5)


def test_top_candidates_equal_a_stable_sort_ties_included():
    rng = np.random.default_rng(5)
    for _ in range(100):
        rows, cols = rng.integers(1, 12), rng.integers(1, 60)
        scores = np.round(rng.normal(size=(rows, cols)), int(rng.integers(0, 3)))  # rounded: many ties
        k = int(rng.integers(1, cols + 1))
        idx, values = top_candidates(scores, k)
        want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        assert np.array_equal(idx, want) and np.array_equal(values, np.take_along_axis(scores, want, axis=1))


# ------------------------------------------------------------------------------------------------ metrics


def test_open_set_rates_agree_with_sklearn_roc_curve():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(3)
    genuine = np.round(rng.normal(1.0, 1.0, 300), 2)  # rounded: ties between and within the two kinds
    genuine[rng.random(300) < 0.2] = -np.inf  # misidentified at rank 1
    impostor = np.round(rng.normal(0.0, 1.0, 200), 2)
    floor = min(genuine[np.isfinite(genuine)].min(), impostor.min()) - 1
    fpr, tpr, thr = roc_curve(np.r_[np.ones(300), np.zeros(200)], np.r_[np.maximum(genuine, floor), impostor],
                              drop_intermediate=False)
    dir_, far, thresholds = open_set_rates(genuine, impostor)
    keep = thr > floor  # sklearn's last point accepts the never-identified genuine probes too
    assert np.allclose(dir_, tpr[keep]) and np.allclose(far, fpr[keep])
    assert np.array_equal(thresholds[1:], thr[keep][1:]) and thresholds[0] == np.inf
    for target in (0.01, 0.1, 0.5):
        ok = fpr[keep] <= target
        rate, threshold = dir_at_far(genuine, impostor, target)
        assert rate == pytest.approx(tpr[keep][ok].max())
        assert threshold == thr[keep][ok][-1] or (threshold == np.inf and not np.isfinite(thr[keep][ok][-1]))
        assert np.mean(impostor >= threshold) <= target


def test_rank_accuracy_and_rates_by_hand():
    assert rank_accuracy([1, 2, 0, 5], 1) == 0.25
    assert rank_accuracy([1, 2, 0, 5], 5) == 0.75
    assert dir_at_far([0.9, 0.8, -np.inf, 0.4], [0.85, 0.3, 0.1, 0.2], 0.25) == (0.75, 0.4)
    assert dir_at_far([0.9, 0.8, -np.inf, 0.4], [0.85, 0.3, 0.1, 0.2], 0.0) == (0.25, 0.9)
    assert dir_at_far([0.9, 0.8, -np.inf, 0.4], [0.95, 0.3, 0.1, 0.2], 0.0) == (0.0, np.inf)
    with pytest.raises(ValueError, match="need both genuine and impostor probes"):
        open_set_rates([0.5], [])
    with pytest.raises(ValueError, match="impostor top-1 scores must be finite numbers: trial 2 has nan"):
        open_set_rates([0.5], [0.1, np.nan])


def test_compute_id_metrics_by_hand(tmp_path, capsys):
    ident = tmp_path / "id.txt"
    ident.write_text("t1 a a 0.9 b 0.2\n"     # genuine (a), rank 1
                     "t2 a a 0.7 b 0.6\n"     # genuine (b), rank 2
                     "t3 <unknown> b 0.1 a 0.0\n"  # genuine (b), rank 1 but rejected
                     "t4 a a 0.8 b 0.3\n"     # impostor (x)
                     "t5 <unknown> b 0.2 a 0.1\n")  # impostor (y)
    utt2spk = tmp_path / "utt2spk"
    utt2spk.write_text("t1 a\nt2 b\nt3 b\nt4 x\nt5 y\ne1 a\n")
    enrolled = tmp_path / "spk2utt"
    enrolled.write_text("a e1\nb e2\n")
    js = tmp_path / "m.json"
    rc, out, err = run_cli(capsys, "compute-id-metrics", ident, "--utt2spk", utt2spk, "--enrolled", enrolled,
                           "--rank", 1, 2, "--far", 0.5, 0.01, "--json", js)
    assert rc == 0, err
    assert out.splitlines() == [
        "probes 5 genuine 3 impostor 2 enrolled 2",
        "top-1 accuracy 66.667 %",
        "top-2 accuracy 100.000 %",
        "DIR at FAR 50 % 33.333 % (threshold 0.8000)",
        "DIR at FAR 1 % 33.333 % (threshold 0.9000)",
        "decisions (genuine): correct 33.333 % wrong speaker 33.333 % unknown 33.333 %",
        "decisions (impostor): false alarm 50.000 %",
    ]
    m = json.loads(js.read_text())
    assert m["dir_at_far"] == {"0.5": pytest.approx(1 / 3), "0.01": pytest.approx(1 / 3)}
    assert m["top_accuracy"]["2"] == 1.0 and m["decisions"]["false_alarm"] == 0.5
    # top-3 needs 3 candidates when more than 2 speakers are enrolled
    enrolled.write_text("a e1\nb e2\nc e3\n")
    assert "top-3 accuracy needs 3 candidates per probe, the file lists 2 (avtk identify --top-k 3)" in one_error(
        capsys, "compute-id-metrics", ident, "--utt2spk", utt2spk, "--enrolled", enrolled, "--rank", 3)
    # an enrollment utterance among the probes
    ident.write_text("e1 a a 0.9 b 0.2\n")
    assert (f"{ident}: probe 'e1' is an enrollment utterance of speaker 'a' (--enrolled line 1): identifying it "
            "is no test") in one_error(capsys, "compute-id-metrics", ident, "--utt2spk", utt2spk,
                                        "--enrolled", enrolled)
    ident.write_text("t1 a a 0.9 z 0.2\n")
    assert "candidates that --enrolled does not list, e.g. 'z'" in one_error(
        capsys, "compute-id-metrics", ident, "--utt2spk", utt2spk, "--enrolled", enrolled)
    ident.write_text("t1 a a 0.2 b 0.9\n")
    assert f"{ident}:1: scores must fall from the first candidate to the last" in one_error(
        capsys, "compute-id-metrics", ident, "--utt2spk", utt2spk, "--enrolled", enrolled)
    ident.write_text("t1 b a 0.9 b 0.1\n")
    assert f"{ident}:1: the decision 'b' is neither the top-1 speaker nor <unknown>" in one_error(
        capsys, "compute-id-metrics", ident, "--utt2spk", utt2spk, "--enrolled", enrolled)
    ident.write_text("t1 a a nan b 0.1\n")
    assert f"{ident}:1: a score is not a finite number" in one_error(
        capsys, "compute-id-metrics", ident, "--utt2spk", utt2spk, "--enrolled", enrolled)


# ------------------------------------------------------------------------------------------------ bad inputs


def test_bad_enrollment_inputs_are_one_error_naming_file_line_and_utterance(toy, tmp_path, capsys):
    out = f"ark,scp:{tmp_path}/g.ark,{tmp_path}/g.scp"
    lists = tmp_path / "lists"

    def enroll_error(text, *extra, flag="--spk2utt", emb=toy["all"]):
        lists.write_text(text)
        return one_error(capsys, "enroll", flag, lists, *extra, emb, out)

    assert f"{lists}:2: enrollment utterance 'b9' of speaker 'b' has no embedding in {toy['all']} " \
           "(--allow-missing leaves such utterances out)" in enroll_error("a a0\nb b0 b9\n")
    assert f"{lists}:2: speaker 'b' has no utterances" in enroll_error("a a0\nb\n")
    assert f"{lists}:3: duplicate key 'a' (first on line 1)" in enroll_error("a a0\nb b0\na a1\n")
    assert f"{lists}:2: utterance 'a0' is listed twice (first for speaker 'a' on line 1)" in \
        enroll_error("a a0\nb a0\n")
    assert f"{lists}:2: utterance 'a0' is listed twice (first for speaker 'a' on line 1)" in \
        enroll_error("a0 a\na0 b\n", flag="--utt2spk")
    assert f"{lists}:1: malformed utt2spk line (expected `utt spk`)" in enroll_error("a0 a b\n", flag="--utt2spk")
    assert f"{lists}:1: '<unknown>' is the decision for no speaker" in enroll_error("<unknown> a0\n")
    assert "none of its 1 enrollment utterances has an embedding" in enroll_error("a a9\n", "--allow-missing")
    # a NaN embedding (written past avtk's writer) and a duplicate key in the ark
    bad = tmp_path / "bad.ark"
    kaldiio.save_ark(str(bad), {"a0": np.ones(DIM, np.float32), "a1": np.r_[np.nan, np.ones(DIM - 1)].astype(
        np.float32)})
    assert f"ark:{bad}: key 'a1': NaN or infinite value at index 0" in enroll_error("a a0 a1\n", emb=f"ark:{bad}")
    with open(bad, "wb") as f:
        kaldiio.save_ark(f, {"a0": np.ones(DIM, np.float32)})
        kaldiio.save_ark(f, {"a0": np.ones(DIM, np.float32)})
    assert "duplicate key 'a0'" in enroll_error("a a0\n", emb=f"ark:{bad}")
    kaldiio.save_ark(str(bad), {"a0": np.zeros(DIM, np.float32)})
    assert "embedding of utterance 'a0' is all zeros" in enroll_error("a a0\n", emb=f"ark:{bad}")
    kaldiio.save_ark(str(bad), {"a0": np.ones(DIM, np.float32), "a1": -np.ones(DIM, np.float32)})
    assert "the enrollment embeddings of speaker 'a' cancel out" in enroll_error("a a0 a1\n", emb=f"ark:{bad}")
    assert not (tmp_path / "g.scp").exists() and not (tmp_path / "g.spk2utt").exists()


def test_bad_identify_inputs_are_one_error(toy, tmp_path, capsys):
    gallery = f"scp:{tmp_path}/g.scp"
    run_cli(capsys, "enroll", "--spk2utt", toy["spk2utt"], "--subtract-mean", toy["all"],
            f"ark,scp:{tmp_path}/g.ark,{tmp_path}/g.scp")
    out = tmp_path / "id.txt"
    short = write_table(tmp_path / "short", {"t": np.ones(DIM - 1)})
    assert f"{short}: embeddings have dimension 7 but the gallery's speaker models have 8" in one_error(
        capsys, "identify", gallery, short, out)
    same = write_table(tmp_path / "same", {"t": kaldiio.load_ark(str(tmp_path / "g.mean")).__next__()[1]})
    assert f"{same}: embedding of utterance 't' is all zeros once the mean is subtracted" in one_error(
        capsys, "identify", gallery, same, out)
    (tmp_path / "g.spk2utt").write_text("a a0\nb b0\nc c0\n")  # another enrollment's list
    assert f"{tmp_path}/g.spk2utt: its speakers are not those of {gallery} (3 and 4; in one only: 'd')" in \
        one_error(capsys, "identify", gallery, toy["test"], out)
    (tmp_path / "g.spk2utt").write_text("a a0\nb b0\nc c0\nd d0\n")
    model = tmp_path / "mean.yaml"
    model.write_text("method: mean\nmodalities: [audio]\nweights: [1.0]\n")
    assert f"{model}: a mean fusion model gives no log-likelihood ratios" in one_error(
        capsys, "identify", "--calibration", model, gallery, toy["test"], out)
    assert "a prior sets the threshold of calibrated scores: it needs a calibration" in one_error(
        capsys, "identify", "--prior", 0.3, gallery, toy["test"], out)
    model.write_text("method: logreg\nmodalities: [audio]\nweights: [1.0]\n"
                     "quality: [{measure: duration, modality: null, cap: 20}]\nquality_weights: [0.1, 0.1]\n")
    assert f"{model}: a calibration with quality measures (QMF) needs each trial's durations" in one_error(
        capsys, "identify", "--calibration", model, gallery, toy["test"], out)
    model.write_text("method: logreg\nmodalities: [audio]\nweights: [1.0]\n")
    assert "a prior (the Bayes threshold) and a threshold are alternatives: give one" in one_error(
        capsys, "identify", "--calibration", model, "--prior", 0.3, "--threshold", 1, gallery, toy["test"], out)
    assert "give both --face-gallery and --face-test, or neither" in one_error(
        capsys, "identify", "--face-gallery", gallery, gallery, toy["test"], out)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ a mini-like corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small synthetic audio-visual corpus (8 test speakers, 3 sessions of 2 utterances; 3 dev speakers)
    with the trivial baseline embeddings (mean MFCC, mean face pixels) of its test and dev sets."""
    root = tmp_path_factory.mktemp("idcorpus")
    avtk("make-synthetic-corpus", "--num-train-speakers", 1, "--num-test-speakers", 8, "--num-dev-speakers", 3,
         "--videos-per-speaker", 3, "--utts-per-video", 2, "--min-duration", 1.5, "--max-duration", 2.5,
         "--no-raw-frames", "--label-noise", 0, root / "corpus", root / "data")
    for modality in ("audio", "face"):
        for x in ("test", "dev"):
            assert cli.main(["extract-baseline", "--modality", modality, str(root / "data" / x),
                             f"ark,scp:{root}/{modality}_{x}.ark,{root}/{modality}_{x}.scp"]) == 0
    # enrol the first 6 test speakers from the first utterance of each of their first two sessions; the last
    # 2 speakers are impostors; every other test utterance is a probe
    lines = (root / "data/test/spk2utt").read_text().splitlines()
    enroll, enrolled_utts = [], set()
    for line in lines[:6]:
        spk, *utts = line.split()
        chosen = [u for u in utts if u.endswith("-00001")][:2]
        enroll.append(f"{spk} {' '.join(chosen)}\n")
        enrolled_utts.update(chosen)
    (root / "enroll.spk2utt").write_text("".join(enroll))
    for modality in ("audio", "face"):
        table = dict(kaldiio.load_scp(f"{root}/{modality}_test.scp"))
        write_table(root / f"{modality}_probe", {k: v for k, v in table.items() if k not in enrolled_utts})
    return root


def _metrics(capsys, ident, root, gallery_spk2utt):
    js = root / "m.json"
    rc, out, err = run_cli(capsys, "compute-id-metrics", ident, "--utt2spk", root / "data/test/utt2spk",
                           "--enrolled", gallery_spk2utt, "--json", js)
    assert rc == 0, err
    return json.loads(js.read_text())


def _oracle_metrics(ident_path, utt2spk_path, enrolled):
    """Closed-set top-1/top-5 and DIR at FAR 10 % computed here from an identify file."""
    from sklearn.metrics import roc_curve

    truth = dict(line.split() for line in utt2spk_path.read_text().splitlines())
    ident = read_identification(ident_path)
    true = [truth[u] for u in ident.utts]
    genuine = np.array([t in enrolled for t in true])
    top1 = np.array([spks[0] == t for spks, t in zip(ident.speakers, true)])
    top5 = np.array([t in spks[:5] for spks, t in zip(ident.speakers, true)])
    s = ident.scores[:, 0]
    floor = s.min() - 1
    fpr, tpr, thr = roc_curve(genuine, np.where(genuine & ~top1, floor, s), drop_intermediate=False)
    dir10 = tpr[(thr > floor) & (fpr <= 0.1)].max()
    return top1[genuine].mean(), top5[genuine].mean(), dir10, genuine.sum(), (~genuine).sum()


def test_identification_on_a_synthetic_corpus_audio_face_fused_and_calibrated(corpus, capsys):
    root = corpus
    for modality in ("audio", "face"):
        extra = ["--allow-missing"] if modality == "face" else []
        gallery = f"ark,scp:{root}/g_{modality}.ark,{root}/g_{modality}.scp"
        rc, _, err = run_cli(capsys, "enroll", "--spk2utt", root / "enroll.spk2utt", *extra, "--subtract-mean",
                             f"scp:{root}/{modality}_test.scp", gallery)
        assert rc == 0, err
    enrolled = [line.split()[0] for line in (root / "enroll.spk2utt").read_text().splitlines()]
    results = {}
    for name, args in {
        "audio": [f"scp:{root}/g_audio.scp", f"scp:{root}/audio_probe.scp"],
        "face": [f"scp:{root}/g_face.scp", f"scp:{root}/face_probe.scp"],
        "fused": ["--face-gallery", f"scp:{root}/g_face.scp", "--face-test", f"scp:{root}/face_probe.scp",
                  f"scp:{root}/g_audio.scp", f"scp:{root}/audio_probe.scp"],
    }.items():
        ident = root / f"id_{name}.txt"
        rc, _, err = run_cli(capsys, "identify", *args, ident)
        assert rc == 0, err
        m = _metrics(capsys, ident, root, root / "g_audio.spk2utt")
        top1, top5, dir10, n_gen, n_imp = _oracle_metrics(ident, root / "data/test/utt2spk", enrolled)
        assert (m["genuine"], m["impostor"]) == (n_gen, n_imp) == (24, 12)  # 6 x 4 genuine, 2 x 6 impostor
        assert m["top_accuracy"]["1"] == pytest.approx(top1) and m["top_accuracy"]["5"] == pytest.approx(top5)
        assert m["dir_at_far"]["0.1"] == pytest.approx(dir10)
        results[name] = m
    # closed set: well above chance (1/6) for every system; fusion at least as good as the weaker modality
    assert results["audio"]["top_accuracy"]["1"] >= 0.3
    assert results["face"]["top_accuracy"]["1"] >= 0.6
    assert results["fused"]["top_accuracy"]["1"] >= results["audio"]["top_accuracy"]["1"]
    # calibrated open set: a logreg calibration trained on the dev trials' scores; LLR decisions
    for modality in ("audio", "face"):
        run_cli(capsys, "score", "--subtract-mean", "--allow-missing", "--trials", root / "data/dev/trials",
                f"scp:{root}/{modality}_dev.scp", root / f"dev_{modality}.txt")
    cal = root / "cal.yaml"
    assert run_cli(capsys, "fuse", "--method", "logreg", "--modalities", "audio,face", "--train-scores",
                   root / "dev_audio.txt", root / "dev_face.txt", "--model-out", cal, "--out", root / "dev_fused.txt",
                   root / "dev_audio.txt", root / "dev_face.txt")[0] == 0
    ident = root / "id_calibrated.txt"
    rc, _, err = run_cli(capsys, "identify", "--calibration", cal, "--face-gallery", f"scp:{root}/g_face.scp",
                         "--face-test", f"scp:{root}/face_probe.scp", f"scp:{root}/g_audio.scp",
                         f"scp:{root}/audio_probe.scp", ident)
    assert rc == 0, err
    m = _metrics(capsys, ident, root, root / "g_audio.spk2utt")
    got = read_identification(ident)
    assert [d == UNKNOWN for d in got.decisions] == list(got.scores[:, 0] < 0)  # Bayes threshold, prior 0.5
    assert m["top_accuracy"]["1"] >= results["audio"]["top_accuracy"]["1"]
    # the threshold that compute-id-metrics reports at FAR 10 %, given back to identify, decides at that FAR
    # (less half the 1e-6 rounding of the scores written)
    threshold = m["threshold_at_far"]["0.1"] - 5e-7
    rc, _, err = run_cli(capsys, "identify", "--calibration", cal, "--threshold", threshold, "--face-gallery",
                         f"scp:{root}/g_face.scp", "--face-test", f"scp:{root}/face_probe.scp",
                         f"scp:{root}/g_audio.scp", f"scp:{root}/audio_probe.scp", ident)
    assert rc == 0, err
    decided = _metrics(capsys, ident, root, root / "g_audio.spk2utt")
    assert decided["decisions"]["correct"] == pytest.approx(m["dir_at_far"]["0.1"])
    assert decided["decisions"]["false_alarm"] <= 0.1


def test_a_gallery_whose_stored_mean_is_far_off_its_embeddings_is_refused(tmp_path):
    """A gallery's G.mean (enroll --mean-from) centres every probe; one edited or corrupted to be 1e25 long made
    every score 1.000000, exit 0. Now one error naming it."""
    rng = np.random.default_rng(3)
    table = {f"s{i % 3}-{i}": rng.normal(size=8).astype(np.float32) for i in range(12)}
    write_table(tmp_path / "e", table)
    (tmp_path / "spk2utt").write_text("".join(f"s{k} " + " ".join(u for u in sorted(table) if u.startswith(f"s{k}-"))
                                              + "\n" for k in range(3)))
    avtk("enroll", "--spk2utt", tmp_path / "spk2utt", "--mean-from", f"scp:{tmp_path}/e.scp", f"scp:{tmp_path}/e.scp",
         f"ark,scp:{tmp_path}/g.ark,{tmp_path}/g.scp")
    mean = dict(kaldiio.load_ark(str(tmp_path / "g.mean")))["mean"]
    with open_writer(f"ark:{tmp_path}/g.mean") as writer:
        writer["mean"] = mean * np.float32(1e25) + np.float32(1e25)
    proc = avtk("identify", f"scp:{tmp_path}/g.scp", f"scp:{tmp_path}/e.scp", tmp_path / "id.txt", check=False)
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "the gallery mean has norm" in errors[0] and "times the median norm" in errors[0], errors[0]
    assert not (tmp_path / "id.txt").exists()
