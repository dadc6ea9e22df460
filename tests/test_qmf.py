"""Quality-measure-function (QMF) calibration: `avtk score --write-quality`, `avtk fuse` with quality measures,
`avtk make-calibration-trials`, run in this process through avtk.cli.main as the console script runs them, on
synthetic scores whose scale and offset depend on the quality measures."""
import re

import numpy as np
import pytest
import yaml

from avtk import cli
from avtk.calibration import FusionModel, train_logreg
from avtk.errors import AvtkError
from avtk.fusion import read_scores
from avtk.io.ark import open_writer
from avtk.metrics import cllr

N_UTT, N_SPK = 300, 30


def run_cli(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def ok(capsys, *args):
    rc, out, err = run_cli(capsys, *args)
    assert rc == 0, err
    return err


def one_error(capsys, *args):
    """The text of the one ERROR line of a command that must fail with exit status 1 and no traceback."""
    rc, _, err = run_cli(capsys, *args)
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert rc == 1 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0].split("] ", 1)[1]


def utt(i):
    return f"s{i % N_SPK:02d}-v{i % 3}-u{i:03d}"


def write_data_dir(d, dur, frames=None, num_frames=False):
    """A data dir of N_UTT utterances: wav.scp (never read), utt2spk, utt2dur (or utt2num_frames), frames.scp
    with frames[i] empty .jpg files per utterance."""
    d.mkdir(parents=True, exist_ok=True)
    keys = sorted(range(N_UTT), key=utt)
    (d / "wav.scp").write_text("".join(f"{utt(i)} /nowhere/{utt(i)}.wav\n" for i in keys))
    (d / "utt2spk").write_text("".join(f"{utt(i)} s{i % N_SPK:02d}\n" for i in keys))
    if num_frames:
        (d / "utt2num_frames").write_text("".join(f"{utt(i)} {int(round(dur[i] * 100))}\n" for i in keys))
    else:
        (d / "utt2dur").write_text("".join(f"{utt(i)} {dur[i]:.2f}\n" for i in keys))
    if frames is not None:
        lines = []
        for i in keys:
            fd = d / "frames" / utt(i)
            fd.mkdir(parents=True, exist_ok=True)
            for k in range(frames[i]):
                (fd / f"{k:04d}.jpg").write_bytes(b"")
            lines.append(f"{utt(i)} {fd}\n")
        (d / "frames.scp").write_text("".join(lines))
    return d


def synthetic_set(d, seed, n=3000):
    """Trials whose scores depend on quality: audio s = 2 (c_e + c_t) + y (0.5 + 0.15 min(d_e, d_t, 20)) + N(0, 1)
    (the cohort means c shift every score; short utterances separate less), face f = 0.15 (k_e + k_t) + y (0.3 +
    0.25 min(k_e, k_t)) + N(0, 1) for k face frames, absent when a side has none. Returns a dict of the files and
    arrays."""
    rng = np.random.default_rng(seed)
    dur = np.round(rng.uniform(1.0, 30.0, N_UTT), 2)
    coh = np.round(rng.uniform(0.0, 0.6, N_UTT), 6)
    frames = rng.integers(0, 13, N_UTT)
    frames[rng.random(N_UTT) < 0.1] = 0
    e = rng.integers(0, N_UTT, n)
    t = (e + rng.integers(1, N_UTT, n)) % N_UTT
    keep = np.unique(e * N_UTT + t, return_index=True)[1]
    e, t = e[np.sort(keep)], t[np.sort(keep)]
    y = rng.integers(0, 2, len(e))
    dmin = np.minimum(np.minimum(dur[e], dur[t]), 20)
    audio = 2.0 * (coh[e] + coh[t]) + y * (0.5 + 0.15 * dmin) + rng.normal(size=len(e))
    face = (0.15 * (frames[e] + frames[t]) + y * (0.3 + 0.25 * np.minimum(frames[e], frames[t]))
            + rng.normal(size=len(e)))
    has_face = (frames[e] > 0) & (frames[t] > 0)
    write_data_dir(d / "data", dur, frames)
    lab = np.where(y == 1, "target", "nontarget")
    with open(d / "audio.txt", "w") as fa, open(d / "face.txt", "w") as ff:
        for i in range(len(e)):
            fa.write(f"{utt(e[i])} {utt(t[i])} {audio[i]:.6f} {lab[i]}\n")
            if has_face[i]:
                ff.write(f"{utt(e[i])} {utt(t[i])} {face[i]:.6f} {lab[i]}\n")
    (d / "audio.cohort").write_text("".join(f"{utt(i)} {coh[i]:.6f}\n" for i in sorted(range(N_UTT), key=utt)))
    return {"dir": d, "data": d / "data", "audio": d / "audio.txt", "face": d / "face.txt",
            "cohort": d / "audio.cohort", "y": y, "has_face": has_face, "e": e, "t": t, "dur": dur, "coh": coh,
            "frames": frames}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("qmf")
    return synthetic_set(root / "dev", 1), synthetic_set(root / "eval", 2)


def test_qmf_calibration_beats_plain_calibration_when_quality_matters(sets, tmp_path, capsys):
    dev, ev = sets
    ok(capsys, "fuse", "--method", "logreg", "--modalities", "audio", "--train-scores", dev["audio"],
       "--out", tmp_path / "plain.txt", ev["audio"])
    err = ok(capsys, "fuse", "--method", "logreg", "--modalities", "audio", "--train-scores", dev["audio"],
             "--train-quality-data", dev["data"], "--train-cohort-stats", dev["cohort"],
             "--quality-data", ev["data"], "--cohort-stats", ev["cohort"],
             "--model-out", tmp_path / "qmf.yaml", "--out", tmp_path / "qmf.txt", ev["audio"])
    assert "quality measures: duration, cohort_mean(audio)" in err
    plain, qmf = read_scores(tmp_path / "plain.txt"), read_scores(tmp_path / "qmf.txt")
    assert qmf.keys() == plain.keys() and len(qmf) == len(ev["y"])
    c_plain, c_qmf = cllr(plain.scores, ev["y"]), cllr(qmf.scores, ev["y"])
    assert c_plain == pytest.approx(0.68, abs=0.03) and c_qmf < c_plain - 0.06, (c_plain, c_qmf)
    # the model file: the measures, their caps, two weights each; the cohort offset 2 (c_e + c_t) = 2 (min + max)
    # is undone by weights of -2 times the score's weight on both
    text = (tmp_path / "qmf.yaml").read_text()
    d = yaml.safe_load(text)
    assert d["quality"] == [{"measure": "duration", "modality": None, "cap": 20.0},
                            {"measure": "cohort_mean", "modality": "audio", "cap": None}]
    assert len(d["quality_weights"]) == 4 and "subsets" not in d
    w = d["weights"][0]
    np.testing.assert_allclose(d["quality_weights"][2:], [-2 * w, -2 * w], rtol=0.15)
    # the same features through train_logreg directly give the same model (6 decimals of the files)
    dev_s = read_scores(dev["audio"])
    ie = [int(k[0].rsplit("u", 1)[1]) for k in dev_s.keys()]
    it = [int(k[1].rsplit("u", 1)[1]) for k in dev_s.keys()]
    dur, coh = np.minimum(np.round(dev["dur"], 2), 20), dev["coh"]
    x = np.column_stack([dev_s.scores, np.minimum(dur[ie], dur[it]), np.maximum(dur[ie], dur[it]),
                         np.minimum(coh[ie], coh[it]), np.maximum(coh[ie], coh[it])])
    w_ref, b_ref = train_logreg(x, dev_s.labels)
    np.testing.assert_allclose(d["weights"] + d["quality_weights"], w_ref, rtol=1e-6, atol=1e-9)
    assert d["bias"] == pytest.approx(b_ref, abs=1e-9)
    # applying the saved model gives the same file; without its quality inputs it is an error
    ok(capsys, "fuse", "--model", tmp_path / "qmf.yaml", "--quality-data", ev["data"], "--cohort-stats", ev["cohort"],
       "--out", tmp_path / "again.txt", ev["audio"])
    assert (tmp_path / "again.txt").read_bytes() == (tmp_path / "qmf.txt").read_bytes()
    assert one_error(capsys, "fuse", "--model", tmp_path / "qmf.yaml", "--cohort-stats", ev["cohort"],
                     "--out", tmp_path / "x.txt", ev["audio"]) == \
        "the model takes the quality measure duration: give --quality-data"
    assert one_error(capsys, "fuse", "--model", tmp_path / "qmf.yaml", "--quality-data", ev["data"],
                     "--out", tmp_path / "x.txt", ev["audio"]) == \
        "the model takes the quality measure cohort_mean(audio): give --cohort-stats"
    # a tool given one pair without quality measures (avtk verify's calibrated_llr) gets an error, not an LLR
    model = FusionModel.load(tmp_path / "qmf.yaml")
    with pytest.raises(AvtkError, match=re.escape("this calibration takes quality measures (duration, "
                                                  "cohort_mean(audio)) that were not given")):
        model.apply(np.array([[1.0]]))
    fused, _ = model.apply(np.array([[1.0]]), {"duration": np.array([[3.0, 25.0]]),
                                                "cohort_mean(audio)": np.array([[0.5, 0.1]])})
    q = d["quality_weights"]
    assert fused[0] == pytest.approx(w * 1.0 + q[0] * 3 + q[1] * 20 + q[2] * 0.1 + q[3] * 0.5 + d["bias"])


def test_audio_visual_qmf_with_face_frames_falls_back_to_audio_qmf(sets, tmp_path, capsys):
    dev, ev = sets
    common = ["--method", "logreg", "--modalities", "audio,face", "--train-scores", dev["audio"], dev["face"]]
    ok(capsys, "fuse", *common, "--out", tmp_path / "plain.txt", ev["audio"], ev["face"])
    err = ok(capsys, "fuse", *common, "--train-quality-data", dev["data"], "--train-cohort-stats", dev["cohort"], "-",
             "--face-frames", "face", "--quality-data", ev["data"], "--cohort-stats", ev["cohort"], "-",
             "--model-out", tmp_path / "av.yaml", "--out", tmp_path / "av.txt", ev["audio"], ev["face"])
    assert "quality measures: duration, cohort_mean(audio), face_frames(face)" in err
    assert f"{int((~ev['has_face']).sum())} fell back to audio only" in err
    ok(capsys, "fuse", *common, "--train-quality-data", dev["data"], "--train-cohort-stats", dev["cohort"], "-",
       "--quality-data", ev["data"], "--cohort-stats", ev["cohort"], "-", "--out", tmp_path / "no_frames.txt",
       ev["audio"], ev["face"])
    plain, av = read_scores(tmp_path / "plain.txt"), read_scores(tmp_path / "av.txt")
    assert len(av) == len(ev["y"])
    c_plain, c_av = cllr(plain.scores, ev["y"]), cllr(av.scores, ev["y"])
    c_no_frames = cllr(read_scores(tmp_path / "no_frames.txt").scores, ev["y"])
    assert c_av < c_no_frames - 0.03 and c_no_frames < c_plain - 0.03, (c_plain, c_no_frames, c_av)
    model = yaml.safe_load((tmp_path / "av.yaml").read_text())
    assert [q["measure"] for q in model["quality"]] == ["duration", "cohort_mean", "face_frames"]
    assert model["quality"][2] == {"measure": "face_frames", "modality": "face", "cap": 50.0}
    # the audio fallback uses the recording's and the audio's measures (4 weights), the face's its frames (4)
    assert len(model["subsets"]["audio"]["quality_weights"]) == 4
    assert len(model["subsets"]["face"]["quality_weights"]) == 4
    # a trial without a face: exactly the audio subset's QMF calibration
    i = int(np.flatnonzero(~ev["has_face"])[0])
    e, t = ev["e"][i], ev["t"][i]
    d, c = np.minimum(ev["dur"][[e, t]], 20), ev["coh"][[e, t]]
    sub = model["subsets"]["audio"]
    want = sub["weights"][0] * read_scores(ev["audio"]).scores[i] + sub["bias"] + np.dot(
        sub["quality_weights"], [d.min(), d.max(), c.min(), c.max()])
    assert av.scores[i] == pytest.approx(want, abs=2e-6)
    # a trial with both: the full model, face frames included
    j = int(np.flatnonzero(ev["has_face"])[0])
    e, t = ev["e"][j], ev["t"][j]
    d, c, k = np.minimum(ev["dur"][[e, t]], 20), ev["coh"][[e, t]], ev["frames"][[e, t]]
    face_j = read_scores(ev["face"]).scores[int(ev["has_face"][:j].sum())]
    want = np.dot(model["weights"], [read_scores(ev["audio"]).scores[j], face_j]) + model["bias"] + np.dot(
        model["quality_weights"], [d.min(), d.max(), c.min(), c.max(), k.min(), k.max()])
    assert av.scores[j] == pytest.approx(want, abs=2e-6)


def test_score_writes_the_cohort_means(tmp_path, capsys):
    rng = np.random.default_rng(0)
    emb = {f"u{i}": rng.normal(size=6) for i in range(5)}
    cohort = {f"c{i}": rng.normal(size=6) for i in range(7)}
    for name, table in (("emb", emb), ("cohort", cohort)):
        with open_writer(f"ark,scp:{tmp_path / name}.ark,{tmp_path / name}.scp") as w:
            for k, v in table.items():
                w[k] = v.astype(np.float32)
    (tmp_path / "trials").write_text("u3 u1 target\nu0 u3 nontarget\nu2 u4 nontarget\n")
    args = ["score", "--trials", tmp_path / "trials", "--cohort", f"scp:{tmp_path}/cohort.scp", "--top-n", "3"]
    ok(capsys, *args, f"scp:{tmp_path}/emb.scp", tmp_path / "plain.txt")
    ok(capsys, *args, "--write-quality", tmp_path / "q.txt", f"scp:{tmp_path}/emb.scp", tmp_path / "scores.txt")
    assert (tmp_path / "scores.txt").read_bytes() == (tmp_path / "plain.txt").read_bytes()
    lines = (tmp_path / "q.txt").read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["u0", "u1", "u2", "u3", "u4"]
    assert all(re.fullmatch(r"u\d -?\d\.\d{6}", ln) for ln in lines)
    c = np.stack([v / np.linalg.norm(v) for v in cohort.values()])
    for ln in lines:
        key, value = ln.split()
        x = emb[key] / np.linalg.norm(emb[key])
        assert float(value) == pytest.approx(np.sort(c @ x)[-3:].mean(), abs=1e-6)
    assert one_error(capsys, "score", "--trials", tmp_path / "trials", "--write-quality", tmp_path / "q2.txt",
                     f"scp:{tmp_path}/emb.scp", tmp_path / "s2.txt") == \
        "--write-quality writes AS-Norm cohort statistics: it needs --cohort"
    assert not (tmp_path / "q2.txt").exists()


def calibration_dir(tmp_path, num_frames=False):
    """60 utterances of 6 speakers, 2 sessions each, durations 1-12 s."""
    rng = np.random.default_rng(5)
    d = tmp_path / "cal"
    d.mkdir(parents=True)
    utts = [(f"spk{s}-sess{v}-{k}", f"spk{s}", f"spk{s}-sess{v}", round(float(rng.uniform(1, 12)), 2))
            for s in range(6) for v in range(2) for k in range(5)]
    (d / "wav.scp").write_text("".join(f"{u} /nowhere/{u}.wav\n" for u, *_ in utts))
    (d / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s, *_ in utts))
    if num_frames:
        (d / "utt2num_frames").write_text("".join(f"{u} {int(dur * 100)}\n" for u, _, _, dur in utts))
    else:
        (d / "utt2dur").write_text("".join(f"{u} {dur}\n" for u, _, _, dur in utts))
    (tmp_path / "utt2session").write_text("".join(f"{u} {v}\n" for u, _, v, _ in utts))
    return d, {u: (s, v, dur) for u, s, v, dur in utts}


def read_trial_lines(path):
    return [ln.split() for ln in path.read_text().splitlines()]


def test_make_calibration_trials(tmp_path, capsys):
    d, info = calibration_dir(tmp_path)
    args = ["make-calibration-trials", "--num-trials", "40", "--utt2session", tmp_path / "utt2session", d]
    ok(capsys, *args, tmp_path / "t1")
    trials = read_trial_lines(tmp_path / "t1")
    assert len(trials) == 40 and all(len(x) == 3 and x[2] in ("target", "nontarget") for x in trials)
    assert [x[2] for x in trials] == ["target", "nontarget"] * 20
    assert len({(e, t) for e, t, _ in trials}) == 40
    for e, t, lab in trials:
        assert 2 <= info[e][2] < 6 and info[t][2] >= 6  # short enrollment, long test
        assert (info[e][0] == info[t][0]) == (lab == "target")
        if lab == "target":
            assert info[e][1] != info[t][1]  # across sessions
    ok(capsys, *args, tmp_path / "t2")
    assert (tmp_path / "t2").read_bytes() == (tmp_path / "t1").read_bytes()
    ok(capsys, *args, "--seed", "1", tmp_path / "t3")
    assert (tmp_path / "t3").read_bytes() != (tmp_path / "t1").read_bytes()
    # three kinds, shared as evenly as possible; (x, y) and (y, x) are one short-short trial
    ok(capsys, "make-calibration-trials", "--num-trials", "31", "--kinds", "short-long,short-short,long-long", d,
       tmp_path / "t4")
    trials = read_trial_lines(tmp_path / "t4")
    labels = [x[2] for x in trials]
    assert len(trials) == 31 and labels.count("target") == 16
    classes = ["S" if info[e][2] < 6 else "L" for e, _, _ in trials]
    classes = [c + ("S" if info[t][2] < 6 else "L") for c, (_, t, _) in zip(classes, trials)]
    assert classes == ["SL"] * 11 + ["SS"] * 10 + ["LL"] * 10
    assert len({tuple(sorted(x[:2])) for x in trials}) == 31
    # durations from utt2num_frames (100 per second) when there is no utt2dur give the same list
    d2, _ = calibration_dir(tmp_path / "frames", num_frames=True)
    ok(capsys, *args[:-1], d2, tmp_path / "t5")
    assert (tmp_path / "t5").read_bytes() == (tmp_path / "t1").read_bytes()


def test_make_calibration_trials_errors(tmp_path, capsys):
    d, info = calibration_dir(tmp_path)
    short_long = sum(1 for a in info.values() for b in info.values()
                     if a[0] == b[0] and a[1] != b[1] and 2 <= a[2] < 6 and b[2] >= 6)
    msg = one_error(capsys, "make-calibration-trials", "--num-trials", "1000", "--utt2session",
                    tmp_path / "utt2session", d, tmp_path / "t")
    assert msg == (f"{d}: short-long trials (short 2-6 s against long >= 6 s): the speakers allow {short_long} "
                   "distinct target trials, 500 asked for (ask for fewer trials, or widen the duration classes)")
    assert one_error(capsys, "make-calibration-trials", "--short-min", "6", d, tmp_path / "t") == \
        "--short-min 6 must be below --short-max 6"
    assert "give distinct kinds among short-long, short-short, long-long" in \
        one_error(capsys, "make-calibration-trials", "--kinds", "short-medium", d, tmp_path / "t")
    lines = (d / "utt2dur").read_text().splitlines()
    (d / "utt2dur").write_text("\n".join(lines[:-2]) + "\n")
    assert one_error(capsys, "make-calibration-trials", d, tmp_path / "t") == \
        f"{d}/utt2dur: no duration for utterance {lines[-2].split()[0]!r} of {d}/utt2spk (2 of 60 utterances lack one)"
    (d / "utt2dur").unlink()
    assert one_error(capsys, "make-calibration-trials", d, tmp_path / "t") == (
        f"{d}: no utt2dur or utt2num_frames to give the utterances' durations "
        "(utils/data/get_utt2dur.sh or compute-fbank --write-num-frames write them)")
    assert not (tmp_path / "t").exists()


def test_quality_input_errors(sets, tmp_path, capsys):
    dev, ev = sets
    train = ["fuse", "--method", "logreg", "--modalities", "audio", "--train-scores", dev["audio"]]
    out = ["--out", tmp_path / "o.txt", ev["audio"]]
    # a utterance of a trial without a duration
    bad = tmp_path / "data"
    bad.mkdir()
    for name in ("wav.scp", "utt2spk"):
        (bad / name).write_text((ev["data"] / name).read_text())
    lines = (ev["data"] / "utt2dur").read_text().splitlines()
    first = read_scores(ev["audio"]).keys()[0]
    (bad / "utt2dur").write_text("".join(ln + "\n" for ln in lines if ln.split()[0] != first[0]))
    assert one_error(capsys, *train, "--train-quality-data", dev["data"], "--quality-data", bad, *out) == \
        f"{bad}/utt2dur: no value for utterance {first[0]!r} of trial {first[0]} {first[1]} (trial 1)"
    # a non-finite cohort mean, and a malformed duration, name file:line
    text = ev["cohort"].read_text().splitlines()
    (tmp_path / "nan.cohort").write_text("\n".join(text[:4] + [text[4].split()[0] + " nan"] + text[5:]) + "\n")
    assert one_error(capsys, *train, "--train-cohort-stats", dev["cohort"], "--cohort-stats",
                     tmp_path / "nan.cohort", *out) == \
        f"{tmp_path}/nan.cohort:5: cohort mean 'nan' of utterance {text[4].split()[0]!r} is not a finite number"
    (tmp_path / "dup.cohort").write_text("\n".join(text[:3] + text[2:]) + "\n")
    assert one_error(capsys, *train, "--train-cohort-stats", tmp_path / "dup.cohort", *out) == \
        f"{tmp_path}/dup.cohort:4: duplicate key {text[2].split()[0]!r} (first on line 3)"
    (bad / "utt2dur").write_text(f"{first[0]} inf\n")
    assert one_error(capsys, *train, "--train-quality-data", dev["data"], "--quality-data", bad, *out).startswith(
        f"{bad}/utt2dur:1: malformed line for utterance {first[0]!r}: duration 'inf' is not a non-negative number")
    # options that do not fit
    assert one_error(capsys, *train, "--train-cohort-stats", dev["cohort"], dev["cohort"], *out) == \
        "--train-cohort-stats: got 2 files for 1 inputs (one per modality, in the same order)"
    assert one_error(capsys, "fuse", "--method", "zmean", "--train-quality-data", dev["data"], *out) == (
        "quality measures (--train-quality-data, --train-cohort-stats, --face-frames) calibrate --method logreg, "
        "not zmean")
    assert one_error(capsys, *train, "--face-frames", "face", *out) == \
        "--face-frames face: not one of the modalities (audio)"
    assert one_error(capsys, *train, "--quality-data", ev["data"], *out) == \
        f"--quality-data {ev['data']}: the model takes no durations or face frames"
    assert one_error(capsys, *train, "--train-quality-data", dev["data"], "--quality-data", ev["data"],
                     "--cohort-stats", ev["cohort"], *out) == \
        f"--cohort-stats: {ev['cohort']} gives cohort means of audio, which the model does not take (give '-' for it)"
    ok(capsys, *train, "--train-quality-data", dev["data"], "--quality-data", ev["data"], "--model-out",
       tmp_path / "m.yaml", *out)
    assert one_error(capsys, "fuse", "--model", tmp_path / "m.yaml", "--face-frames", "audio", *out) == \
        f"--face-frames builds a model; --model {tmp_path / 'm.yaml'} applies a saved one: give one"
    assert not (tmp_path / "o.txt").exists() or (tmp_path / "o.txt").stat().st_size > 0


def test_model_file_quality_entries(tmp_path):
    base = {"method": "logreg", "modalities": ["audio"], "weights": [1.0], "bias": 0.0, "prior": 0.5,
            "quality": [{"measure": "duration", "modality": None, "cap": 20.0}], "quality_weights": [0.1, 0.2]}
    assert FusionModel.from_dict(base).quality == base["quality"]
    cases = [
        ({"quality_weights": [0.1]}, "key 'quality_weights' must be 2 numbers (a min and a max weight per quality "
                                     "measure), got [0.1]"),
        ({"quality": [{"measure": "snr", "modality": None, "cap": None}]}, "quality entry {'measure': 'snr'"),
        ({"quality": [{"measure": "cohort_mean", "modality": None, "cap": None}]}, "quality entry"),
        ({"quality": [{"measure": "duration", "modality": None, "cap": 20.0}] * 2, "quality_weights": [0] * 4},
         "quality measures repeat: duration, duration"),
        ({"method": "mean"}, "quality measures belong to a logreg model, not mean"),
        ({"quality": [{"measure": "duration", "modality": None, "cap": -1}]},
         "quality entry {'measure': 'duration', 'modality': None, 'cap': -1} must be"),
    ]
    for change, message in cases:
        with pytest.raises(AvtkError, match=re.escape(f"m.yaml: {message}")):
            FusionModel.from_dict({**base, **change}, where="m.yaml")
    two = {**base, "modalities": ["audio", "face"], "weights": [1.0, 1.0],
           "subsets": {"audio": {"weights": [1.0], "bias": 0.0}, "face": {"weights": [1.0], "bias": 0.0}}}
    with pytest.raises(AvtkError, match=re.escape("subsets entry 'audio' must name modalities and hold 1 weights, "
                                                  "a bias and 2 quality_weights")):
        FusionModel.from_dict(two, where="m.yaml")
    path = tmp_path / "m.yaml"
    FusionModel.from_dict(base).save(path)
    assert FusionModel.load(path) == FusionModel.from_dict(base)


def test_a_calibration_list_too_small_for_its_parameters_is_warned_about(sets, tmp_path, capsys):
    """Fewer than 10 trials of the rarer class per fitted parameter: a WARNING naming the counts (the fit itself
    goes ahead); the full development list (about 1,500 per class for 5 parameters) gives none."""
    dev, ev = sets
    lines = dev["audio"].read_text().splitlines()
    small = tmp_path / "small.txt"
    # 30 target and 30 non-target trials: enough for score + bias (2 parameters), not for 4 quality features more
    tar = [line for line in lines if line.endswith(" target")][:30]
    non = [line for line in lines if line.endswith(" nontarget")][:30]
    small.write_text("\n".join(sorted(tar + non)) + "\n")
    quality = ["--train-quality-data", dev["data"], "--train-cohort-stats", dev["cohort"],
               "--quality-data", ev["data"], "--cohort-stats", ev["cohort"]]
    err = ok(capsys, "fuse", "--method", "logreg", "--modalities", "audio", "--train-scores", small, *quality,
             "--out", tmp_path / "qmf.txt", ev["audio"])
    warned = [line for line in err.splitlines() if " WARNING " in line]
    assert len(warned) == 1 and ("logreg (audio): 30 target and 30 non-target development trials for 6 parameters "
                                 "(1 score, 4 quality features and a bias): fewer than 10 of the rarer class per "
                                 "parameter") in warned[0] and "or fewer quality measures" in warned[0], err
    assert (tmp_path / "qmf.txt").is_file()
    err = ok(capsys, "fuse", "--method", "logreg", "--modalities", "audio", "--train-scores", small,
             "--out", tmp_path / "plain.txt", ev["audio"])
    assert " WARNING " not in err, err
    err = ok(capsys, "fuse", "--method", "logreg", "--modalities", "audio", "--train-scores", dev["audio"], *quality,
             "--out", tmp_path / "full.txt", ev["audio"])
    assert " WARNING " not in err, err
