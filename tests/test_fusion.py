"""Fusion and calibration (avtk fuse, avtk.calibration) and the compute-metrics command on their output."""
import json
import logging
import re
import sys

import numpy as np
import pytest

from avtk.bin import compute_metrics, fuse
from avtk.calibration import FusionModel, train_logreg, train_model
from avtk.errors import AvtkError
from avtk.fusion import read_scores
from avtk.metrics import cllr, eer, min_cllr
from conftest import avtk

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic(n, seed):
    """Two modalities of Gaussian scores with different scales and offsets, as raw cosines would be:
    audio N(0.1 + 0.25 y, 0.15), face N(0.3 + 0.2 y, 0.1); labels balanced at random."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    audio = rng.normal(size=n) * 0.15 + 0.25 * labels + 0.1
    face = rng.normal(size=n) * 0.1 + 0.2 * labels + 0.3
    return labels, audio, face


def write(path, labels, scores, skip=(), with_labels=True, order=None):
    order = range(len(scores)) if order is None else order
    with open(path, "w") as f:
        for i in order:
            if i in skip:
                continue
            lab = f" {'target' if labels[i] else 'nontarget'}" if with_labels else ""
            f.write(f"e{i} t{i} {scores[i]:.6f}{lab}\n")
    return path


def run_fuse(*argv):
    return fuse.main(fuse.get_parser().parse_args([str(a) for a in argv]))


def run_metrics(*argv):
    return compute_metrics.main(compute_metrics.get_parser().parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("fusion")
    lab, a, v = synthetic(4000, 1)
    dev = (write(d / "dev_audio.txt", lab, a), write(d / "dev_face.txt", lab, v))
    lab_e, a_e, v_e = synthetic(4000, 2)
    ev = (write(d / "eval_audio.txt", lab_e, a_e), write(d / "eval_face.txt", lab_e, v_e))
    return {"dir": d, "dev": dev, "eval": ev, "eval_data": (lab_e, a_e, v_e), "dev_data": (lab, a, v)}


def fused_scores(path):
    return read_scores(path).scores


def test_mean_and_weighted(sets, tmp_path):
    lab, a, v = sets["eval_data"]
    a, v = np.round(a, 6), np.round(v, 6)
    run_fuse("--method", "mean", "--out", tmp_path / "mean.txt", *sets["eval"])
    np.testing.assert_allclose(fused_scores(tmp_path / "mean.txt"), (a + v) / 2, atol=1e-6)
    run_fuse("--method", "weighted", "--weights", "0.6,0.4", "--out", tmp_path / "w.txt", *sets["eval"])
    out = read_scores(tmp_path / "w.txt")
    np.testing.assert_allclose(out.scores, 0.6 * a + 0.4 * v, atol=1e-6)
    np.testing.assert_array_equal(out.labels, lab)
    assert out.enroll[:3] == ["e0", "e1", "e2"]
    with pytest.raises(AvtkError, match="need 2 finite weights"):
        run_fuse("--method", "weighted", "--weights", "1", "--out", tmp_path / "x.txt", *sets["eval"])
    with pytest.raises(AvtkError, match="weighted needs 2 weights"):
        run_fuse("--method", "weighted", "--out", tmp_path / "x.txt", *sets["eval"])


def test_zmean_statistics_from_inputs_or_dev(sets, tmp_path):
    _, a, v = sets["eval_data"]
    a, v = np.round(a, 6), np.round(v, 6)
    run_fuse("--method", "zmean", "--out", tmp_path / "z.txt", *sets["eval"])
    np.testing.assert_allclose(fused_scores(tmp_path / "z.txt"),
                               ((a - a.mean()) / a.std() + (v - v.mean()) / v.std()) / 2, atol=1e-5)
    _, da, dv = sets["dev_data"]
    da, dv = np.round(da, 6), np.round(dv, 6)
    run_fuse("--method", "zmean", "--train-scores", *sets["dev"], "--modalities", "audio,face",
             "--model-out", tmp_path / "z.yaml", "--out", tmp_path / "zd.txt", *sets["eval"])
    model = FusionModel.load(tmp_path / "z.yaml")
    assert model.norm["audio"]["mean"] == pytest.approx(da.mean())
    assert model.norm["face"]["std"] == pytest.approx(dv.std())
    np.testing.assert_allclose(fused_scores(tmp_path / "zd.txt"),
                               ((a - da.mean()) / da.std() + (v - dv.mean()) / dv.std()) / 2, atol=1e-5)


def test_logreg_beats_each_modality_and_is_calibrated(sets, tmp_path):
    model_path = tmp_path / "model.yaml"
    run_fuse("--method", "logreg", "--train-scores", *sets["dev"], "--modalities", "audio,face",
             "--model-out", model_path, "--out", tmp_path / "fused.txt", *sets["eval"])
    lab, a, v = sets["eval_data"]
    fused = fused_scores(tmp_path / "fused.txt")
    assert eer(fused, lab)[0] < 0.85 * min(eer(a, lab)[0], eer(v, lab)[0])
    assert eer(fused, lab)[0] <= eer((a + v) / 2, lab)[0]
    c, mc = cllr(fused, lab), min_cllr(fused, lab)
    assert mc <= c < mc + 0.03
    assert cllr((a + v) / 2, lab) > 0.9  # raw scores are far from calibrated
    # the model file: method, names, weights, bias, prior, normalisation, single-modality calibrations
    model = FusionModel.load(model_path)
    assert model.method == "logreg" and model.modalities == ["audio", "face"] and model.prior == 0.5
    assert set(model.subsets) == {"audio", "face"} and set(model.norm) == {"audio", "face"}
    # Gaussian classes with a shared variance: the LLR weight of each modality is delta-mean / variance
    np.testing.assert_allclose(model.weights, [0.25 / 0.15**2, 0.2 / 0.1**2], rtol=0.1)
    # applying the saved model gives the same file, YAML and JSON round trips give the same model
    run_fuse("--model", model_path, "--out", tmp_path / "again.txt", *sets["eval"])
    assert (tmp_path / "again.txt").read_bytes() == (tmp_path / "fused.txt").read_bytes()
    model.save(tmp_path / "model.json")
    assert FusionModel.load(tmp_path / "model.json") == model
    model.save(tmp_path / "model2.yaml")
    assert FusionModel.load(tmp_path / "model2.yaml") == model
    with pytest.raises(AvtkError, match="is a logreg model"):
        run_fuse("--method", "mean", "--model", model_path, "--out", tmp_path / "x.txt", *sets["eval"])


def test_logreg_is_deterministic_and_handles_separable_data():
    lab, a, v = synthetic(2000, 7)
    s = np.c_[a, v]
    w1, b1 = train_logreg(s, lab)
    w2, b2 = train_logreg(s, lab)
    assert np.array_equal(w1, w2) and b1 == b2
    w, b = train_logreg(np.array([0.0, 1, 2, 3]), np.array([0, 0, 1, 1]))
    assert np.all(np.isfinite(w)) and np.isfinite(b) and w[0] > 0
    # the prior shifts the bias by -logit(prior) and keeps the weights near
    w3, b3 = train_logreg(s, lab, prior=0.1)
    assert abs(b3 - b1) < 2.5 and np.allclose(w3, w1, rtol=0.2)


def test_missing_modality_falls_back_to_its_own_calibration(sets, tmp_path, caplog):
    lab, a, v = sets["eval_data"]
    no_face, no_audio = {3, 10, 200}, {7, 55}
    audio = write(tmp_path / "audio.txt", lab, a, skip=no_audio)
    face = write(tmp_path / "face.txt", lab, v, skip=no_face)
    caplog.set_level(logging.INFO)
    run_fuse("--method", "logreg", "--train-scores", *sets["dev"], "--modalities", "audio,face",
             "--model-out", tmp_path / "m.yaml", "--out", tmp_path / "fused.txt", audio, face)
    assert re.search(r"fused 4000 trials .* 3995 with every modality, 3 fell back to audio only, "
                     r"2 fell back to face only", caplog.text)
    out = read_scores(tmp_path / "fused.txt")
    assert len(out) == 4000 and out.enroll == [f"e{i}" for i in range(4000)]
    model = FusionModel.load(tmp_path / "m.yaml")
    cal_a, cal_v = model.subsets["audio"], model.subsets["face"]
    for i in no_face:
        assert out.scores[i] == pytest.approx(cal_a["weights"][0] * round(a[i], 6) + cal_a["bias"], abs=2e-6)
    for i in no_audio:
        assert out.scores[i] == pytest.approx(cal_v["weights"][0] * round(v[i], 6) + cal_v["bias"], abs=2e-6)
    # the single-modality calibrations are calibrated too
    llr_a = cal_a["weights"][0] * a + cal_a["bias"]
    assert cllr(llr_a, lab) < min_cllr(llr_a, lab) + 0.03
    # a trial no input scores: an error naming the trials line, unless --allow-missing
    trials = tmp_path / "trials"
    trials.write_text("".join(f"e{i} t{i} {'target' if lab[i] else 'nontarget'}\n" for i in range(4000)))
    both = write(tmp_path / "face2.txt", lab, v, skip=no_face | {7})
    with pytest.raises(AvtkError, match=rf"{re.escape(str(trials))}:8: trial e7 t7 has no score in any input"):
        run_fuse("--model", tmp_path / "m.yaml", "--trials", trials, "--out", tmp_path / "x.txt", audio, both)
    assert not (tmp_path / "x.txt").exists()
    run_fuse("--model", tmp_path / "m.yaml", "--trials", trials, "--allow-missing", "--out", tmp_path / "x.txt",
             audio, both)
    assert len(read_scores(tmp_path / "x.txt")) == 3999


def test_mismatched_trials_and_bad_scores_are_errors(sets, tmp_path):
    lab, a, v = sets["eval_data"]
    audio = write(tmp_path / "audio.txt", lab, a)
    swapped = write(tmp_path / "face.txt", lab, v, order=[0, 1, 3, 2] + list(range(4, 4000)))
    with pytest.raises(AvtkError, match=rf"{re.escape(str(swapped))}:4: trial e2 t2 is out of order"):
        run_fuse("--method", "mean", "--out", tmp_path / "x.txt", audio, swapped)
    bad = tmp_path / "nan.txt"
    bad.write_text("e0 t0 0.5 target\ne1 t1 nan nontarget\n")
    with pytest.raises(AvtkError, match=rf"{re.escape(str(bad))}:2: score 'nan' is not finite"):
        run_fuse("--method", "mean", "--out", tmp_path / "x.txt", audio, bad)
    bad.write_text("e0 t0 0.5 target\ne1 t1 inf nontarget\n")
    with pytest.raises(AvtkError, match=":2: score 'inf' is not finite"):
        run_metrics(bad)
    bad.write_text("e0 t0 0.5 target\ne1 t1 0.2 nontarget\ne0 t0 0.4 target\n")
    with pytest.raises(AvtkError, match=":3: duplicate trial e0 t0"):
        run_metrics(bad)
    relabelled = tmp_path / "relabelled.txt"
    relabelled.write_text("e0 t0 0.5 nontarget\n")
    with pytest.raises(AvtkError, match=":1: trial e0 t0 is nontarget here but target in"):
        run_fuse("--method", "mean", "--out", tmp_path / "x.txt", audio, relabelled)
    trials = tmp_path / "trials"
    trials.write_text("e0 t0 target\ne1 t1 nontarget\n")
    with pytest.raises(AvtkError, match=r"audio.txt:3: trial e2 t2 is not in .*trials"):
        run_fuse("--method", "mean", "--trials", trials, "--out", tmp_path / "x.txt", audio, audio)
    with pytest.raises(AvtkError, match="logreg needs labelled development scores"):
        run_fuse("--method", "logreg", "--out", tmp_path / "x.txt", audio, audio)


def test_compute_metrics_cli(sets, tmp_path):
    run_fuse("--method", "logreg", "--train-scores", *sets["dev"], "--out", tmp_path / "fused.txt", *sets["eval"])
    proc = avtk("compute-metrics", "--calibrated", "--json", tmp_path / "m.json", "--det-plot", tmp_path / "det.png",
                "--hist-plot", tmp_path / "hist.png", tmp_path / "fused.txt")
    lines = proc.stdout.splitlines()
    assert [re.sub(r" [\d.]+( %)?$", "", line) for line in lines[:-1]] == [
        "EER", "minDCF(p=0.01)", "minDCF(p=0.05)", "minCllr", "Cllr", "actDCF(p=0.01)", "actDCF(p=0.05)"]
    assert re.fullmatch(r"trials 4000 target \d+ nontarget \d+", lines[-1])
    for png in ("det.png", "hist.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["calibrated"] and m["trials"] == 4000 and set(m["act_dcf"]) == {"0.01", "0.05"}
    assert m["min_cllr"] <= m["cllr"] < m["min_cllr"] + 0.03
    assert f"EER {100 * m['eer']:.3f} %" == lines[0]
    # uncalibrated scores: no Cllr/actDCF lines
    out = avtk("compute-metrics", sets["eval"][0]).stdout
    assert "minCllr" in out and "Cllr " not in out.replace("minCllr", "") and "actDCF" not in out


def test_compute_metrics_labels_from_trials(sets, tmp_path):
    lab, a, _ = sets["eval_data"]
    unlabelled = write(tmp_path / "s.txt", lab, a, with_labels=False)
    trials = tmp_path / "trials"
    trials.write_text("".join(f"e{i} t{i} {'target' if lab[i] else 'nontarget'}\n" for i in range(4000)))
    run_metrics("--trials", trials, "--json", tmp_path / "a.json", unlabelled)
    run_metrics("--json", tmp_path / "b.json", sets["eval"][0])
    a_json, b_json = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert a_json["eer"] == b_json["eer"] and a_json["min_dcf"] == b_json["min_dcf"]
    with pytest.raises(AvtkError, match="no target|nontarget label: give --trials"):
        run_metrics(unlabelled)
    other = tmp_path / "other_trials"
    other.write_text(trials.read_text().replace("e5 t5", "e5 t99"))
    with pytest.raises(AvtkError, match=r"s.txt:6: trial e5 t5 is not in .*other_trials"):
        run_metrics("--trials", other, unlabelled)
    short = write(tmp_path / "short.txt", lab, a, with_labels=False, skip={9})
    with pytest.raises(AvtkError, match=r"trials:10: trial e9 t9 has no score in .*short.txt"):
        run_metrics("--trials", trials, short)


def test_plots_without_matplotlib_say_how_to_install(sets, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(AvtkError, match=re.escape("pip install 'avtk[plot]'")):
        run_metrics("--det-plot", tmp_path / "det.png", sets["eval"][0])
    assert not (tmp_path / "det.png").exists()


def test_single_system_calibration_and_three_modalities(sets, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run_fuse("--method", "logreg", "--train-scores", sets["dev"][0], "--out", tmp_path / "cal.txt", sets["eval"][0])
    lab, a, v = sets["eval_data"]
    llr = fused_scores(tmp_path / "cal.txt")
    assert eer(llr, lab)[0] == eer(a, lab)[0] and cllr(llr, lab) < min_cllr(llr, lab) + 0.03
    assert "fell back" not in caplog.text
    # three modalities: every proper subset has its own calibration, used for exactly that subset
    rng = np.random.default_rng(0)
    third = rng.normal(size=len(lab)) + lab
    s = np.c_[a, v, third]
    model = train_model("logreg", ["a", "v", "x"], s, lab)
    assert set(model.subsets) == {"a", "v", "x", "a+v", "a+x", "v+x"}
    s[0, 2] = s[1, 0] = s[1, 1] = np.nan
    fused, avail = model.apply(s)
    sub = model.subsets["a+v"]
    assert fused[0] == pytest.approx(np.dot(sub["weights"], s[0, :2]) + sub["bias"])
    assert fused[1] == pytest.approx(model.subsets["x"]["weights"][0] * s[1, 2] + model.subsets["x"]["bias"])
    assert fused[2] == pytest.approx(np.dot(model.weights, s[2]) + model.bias)
