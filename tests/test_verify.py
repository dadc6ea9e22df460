"""avtk verify: two recordings (and faces) scored with model files, thresholds stored in them, calibration."""
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from avtk.bin import verify as verify_cmd
from avtk.calibration import train_model
from avtk.embed import embed, embed_faces, load_model, read_model_file
from avtk.errors import AvtkError
from avtk.verify import eer_threshold, read_audio, set_threshold, verify_pair
from conftest import SMALL_FACE, SMALL_SPEAKER, avtk, write_model

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    avtk("make-synthetic-corpus", "--num-train-speakers", 1, "--num-test-speakers", 2, "--videos-per-speaker", 2,
         "--utts-per-video", 1, "--min-duration", 1.5, "--max-duration", 2, "--no-raw-frames",
         root / "corpus", root / "data")
    wavs = dict(line.split() for line in (root / "data/test/wav.scp").read_text().splitlines())
    frames = dict(line.split() for line in (root / "data/test/frames.scp").read_text().splitlines())
    utts = sorted(wavs)  # spk1 video1, spk1 video2, spk2 video1, spk2 video2
    return {"root": root, "wav": wavs, "frames": frames, "utts": utts,
            "speaker": write_model(root / "ecapa.pt", SMALL_SPEAKER),
            "face": write_model(root / "face.pt", SMALL_FACE, 1)}


def lines(stdout):
    """{key: value} of `key: value` lines (every stdout line must be one)."""
    out = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(": ")
        assert sep and key and " " not in key, f"not a key: value line: {line!r}"
        out[key] = value
    return out


def verify(capsys, *argv):
    """`avtk verify ARGV` in this process (the command's own parser and main): its stdout lines as a dict."""
    capsys.readouterr()
    assert verify_cmd.main(verify_cmd.get_parser().parse_args([str(a) for a in argv])) == 0
    return lines(capsys.readouterr().out)


def test_same_and_different_pairs_score_as_the_pipeline(setup, capsys):
    """The printed scores equal the cosine (speech) and mean-frame dot product (faces) of the embeddings that
    extract-embeddings' code gives; no threshold stored: a note and no decision."""
    net, _ = load_model(setup["speaker"])
    fnet, _ = load_model(setup["face"])
    utts = setup["utts"]
    emb = dict(embed(net, ((u, sf.read(setup["wav"][u], dtype="float32")[0]) for u in utts), "wav"))
    femb = dict(embed_faces(fnet, ((u, setup["frames"][u]) for u in utts)))
    for a, b in ((utts[0], utts[2]), (utts[0], utts[1])):  # different speaker, same speaker (other video)
        argv = ["--model", setup["speaker"], "--face-model", setup["face"], "--face-a", setup["frames"][a],
                "--face-b", setup["frames"][b], setup["wav"][a], setup["wav"][b]]
        if b == utts[2]:
            proc = avtk("verify", *argv)
            got = lines(proc.stdout)
            assert f"{setup['frames'][a]}: " in proc.stderr and " aligned frames, " in proc.stderr
        else:
            got = verify(capsys, *argv)
        assert list(got) == ["speaker_score", "face_score", "note"]
        assert got["note"].startswith("no threshold stored (set one with --set-threshold")
        cos = emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b])
        assert abs(float(got["speaker_score"]) - cos) < 1e-4
        assert abs(float(got["face_score"]) - femb[a] @ femb[b]) < 1e-4


def test_stored_threshold_round_trip(setup, tmp_path, capsys):
    model = tmp_path / "m.pt"
    shutil.copy(setup["speaker"], model)
    a, b = (setup["wav"][u] for u in setup["utts"][:3:2])
    proc = avtk("verify", "--model", model, "--set-threshold", 0.25, "--threshold-source", "EER on dev trials")
    assert lines(proc.stdout) == {"threshold": "0.2500", "threshold_source": "EER on dev trials"}
    blob = read_model_file(model)
    assert blob["verify"] == {"threshold": 0.25, "source": "EER on dev trials", "score": "cosine of embeddings"}
    assert all(torch.equal(v, read_model_file(setup["speaker"])["model"][k]) for k, v in blob["model"].items())
    load_model(model)  # extraction still reads the file
    got = verify(capsys, "--model", model, a, a)
    assert got == {"speaker_score": "1.0000", "threshold": "0.2500", "threshold_source": "EER on dev trials",
                   "decided_by": "threshold", "decision": "same"}
    score = float(dict(verify_pair(model, a, b))["speaker_score"])
    set_threshold(model, score + 0.01, "above")
    assert dict(verify_pair(model, a, b))["decision"] == "different"
    set_threshold(model, score - 0.01, "below")
    assert dict(verify_pair(model, a, b))["decision"] == "same"

    scores = tmp_path / "dev_scores.txt"
    scores.write_text("a b 0.9 target\na c 0.6 nontarget\nb c 0.4 nontarget\nd e 0.8 target\n"
                      "d f 0.3 nontarget\ne f 0.5 target\ng h 0.35 target\ng i 0.1 nontarget\n")
    threshold, source = eer_threshold(scores)
    assert threshold == 0.5 and "(EER 25.00 %, 8 trials)" in source
    assert verify(capsys, "--model", model, "--set-threshold-eer", scores)["threshold"] == "0.5000"
    assert read_model_file(model)["verify"]["source"] == source
    with pytest.raises(AvtkError, match="give no recordings"):
        verify_cmd.main(verify_cmd.get_parser().parse_args(["--model", str(model), "--set-threshold", "1", a, b]))
    with pytest.raises(AvtkError, match="not a finite number"):
        set_threshold(model, float("nan"), "x")


def test_resampled_stereo_wav_and_m4a(setup, tmp_path):
    """A 44.1 kHz stereo wav (channel 0, the default; channel 1; the mean) and an AAC m4a of the same utterance
    read back at 16 kHz."""
    from avtk.io.media import write_audio
    from avtk.io.resample import resample

    x, _ = sf.read(setup["wav"][setup["utts"][0]], dtype="float32")
    up = resample(torch.from_numpy(x), 16000, 44100).numpy()
    sf.write(tmp_path / "stereo.wav", np.stack([up, 0.5 * up], 1), 44100, subtype="PCM_16")
    write_audio(tmp_path / "a.m4a", x, 16000)
    first, what = read_audio(tmp_path / "stereo.wav")
    assert len(first) == len(x) and np.abs(first - x).max() < 5e-3
    assert "44100 Hz, 2 channel(s), channel 0, resampled to 16000 Hz" in what
    mean, what = read_audio(tmp_path / "stereo.wav", channel="mean")
    assert len(mean) == len(x) and np.abs(mean - 0.75 * x).max() < 5e-3
    assert "44100 Hz, 2 channel(s), channels averaged, resampled to 16000 Hz" in what
    second, _ = read_audio(tmp_path / "stereo.wav", channel=1)
    assert np.abs(second - 0.5 * x).max() < 5e-3
    m4a, _ = read_audio(tmp_path / "a.m4a")
    assert len(m4a) == len(x) and np.corrcoef(m4a, x)[0, 1] > 0.999
    with pytest.raises(AvtkError, match="has 2 channel"):
        read_audio(tmp_path / "stereo.wav", channel=2)

    proc = avtk("verify", "--model", setup["speaker"], tmp_path / "stereo.wav", tmp_path / "a.m4a")
    assert float(lines(proc.stdout)["speaker_score"]) > 0.999  # the same utterance
    assert "resampled to 16000 Hz" in proc.stderr and "a.m4a: 1." in proc.stderr


def test_calibration_gives_llrs_and_decides(setup, tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 50)
    dev = np.stack([rng.normal(0.6, 0.1, 100) - 0.3 * (1 - labels), rng.normal(0.9, 0.05, 100) - 0.1 * (1 - labels)], 1)
    fusion = train_model("logreg", ["audio", "face"], dev, labels)
    fusion.save(tmp_path / "fusion.yaml")
    train_model("logreg", ["audio"], dev[:, :1], labels).save(tmp_path / "audio.yaml")
    a, b = setup["utts"][0], setup["utts"][2]
    got = verify(capsys, "--model", setup["speaker"], "--calibration", tmp_path / "fusion.yaml", "--face-model",
                 setup["face"], "--face-a", setup["frames"][a], "--face-b", setup["frames"][b],
                 setup["wav"][a], setup["wav"][b])
    assert list(got) == ["speaker_score", "face_score", "llr", "face_llr", "fused_llr", "decided_by",
                         "llr_threshold", "decision"]
    s, f = float(got["speaker_score"]), float(got["face_score"])
    slack = 1e-4 * (1 + np.abs(fusion.weights).sum())  # the scores are printed to 4 decimals
    assert abs(float(got["fused_llr"]) - (fusion.weights[0] * s + fusion.weights[1] * f + fusion.bias)) < slack
    cal = fusion.subsets["audio"]
    assert abs(float(got["llr"]) - (cal["weights"][0] * s + cal["bias"])) < slack
    assert got["decided_by"] == "fused_llr" and got["llr_threshold"] == "0.0000"
    assert got["decision"] == ("same" if float(got["fused_llr"]) > 0 else "different")

    out = dict(verify_pair(setup["speaker"], setup["wav"][a], setup["wav"][b], calibration=tmp_path / "audio.yaml",
                           prior=0.01))
    assert out["decided_by"] == "llr" and float(out["llr_threshold"]) == pytest.approx(np.log(99), abs=1e-4)
    assert out["decision"] == ("same" if float(out["llr"]) > np.log(99) else "different")
    train_model("mean", ["audio", "face"], dev).save(tmp_path / "mean.yaml")
    with pytest.raises(AvtkError, match="a mean fusion model gives no log-likelihood ratios"):
        verify_pair(setup["speaker"], setup["wav"][a], setup["wav"][b], calibration=tmp_path / "mean.yaml")


def test_faces_and_audio_from_a_video(setup, tmp_path):
    """An mp4 with a face (MTCNN + alignment every 0.4 s) and an AAC track serves as both inputs."""
    import matplotlib
    from PIL import Image

    from avtk.io.media import write_video

    photo = np.asarray(Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
                       .convert("RGB").resize((300, 256)))
    wav = setup["wav"][setup["utts"][0]]
    x, _ = sf.read(wav, dtype="float32")
    write_video(tmp_path / "v.mp4", [photo] * 25 + [np.full_like(photo, 100)] * 13, fps=25, wave=x)
    proc = avtk("verify", "--model", setup["speaker"], "--face-model", setup["face"], "--face-a", tmp_path / "v.mp4",
                "--face-b", setup["frames"][setup["utts"][0]], tmp_path / "v.mp4", wav)
    got = lines(proc.stdout)
    assert float(got["speaker_score"]) > 0.999 and -1 <= float(got["face_score"]) <= 1
    assert "v.mp4: 3 frames (one every 0.4 s), 2 with a face, 2 used" in proc.stderr


def test_missing_inputs_are_one_error_line(setup, tmp_path):
    a = setup["wav"][setup["utts"][0]]
    proc = avtk("verify", "--model", setup["speaker"], a, tmp_path / "missing.wav", check=False)
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not proc.stdout
    assert errors == [errors[0]] and f"ERROR [avtk verify] audio file {tmp_path}/missing.wav does not exist" \
        in errors[0]
    with pytest.raises(AvtkError, match=f"--face-b: face input {tmp_path}/nofaces does not exist"):
        verify_pair(setup["speaker"], a, a, face_model=setup["face"], face_a=setup["frames"][setup["utts"][0]],
                    face_b=tmp_path / "nofaces")
    (tmp_path / "x.pt").write_text("hello\n")
    with pytest.raises(AvtkError, match="x.pt: not an avtk model file"):
        verify_pair(tmp_path / "x.pt", a, a)
    with pytest.raises(AvtkError, match="is a face model"):
        verify_pair(setup["face"], a, a)
    with pytest.raises(AvtkError, match="need a face model"):
        verify_pair(setup["speaker"], a, a, face_a=a, face_b=a)


def test_truncated_wav_and_zero_embedding_give_no_score(setup, tmp_path, monkeypatch):
    """A wav cut short while copying is an error naming both lengths (it was scored as a shorter recording);
    an all-zero embedding has no cosine, by the rule `avtk score` and `avtk cleanse` apply."""
    a = setup["wav"][setup["utts"][0]]
    data = open(a, "rb").read()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:len(data) // 2])
    proc = avtk("verify", "--model", setup["speaker"], a, cut, check=False)
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not proc.stdout and len(errors) == 1
    assert re.search(rf"ERROR \[avtk verify\] audio file {cut} is truncated: its header declares \d\.\d{{3}} s "
                     r"\(\d+ samples\) but the file holds \d\.\d{3} s \(\d+ samples\)$", errors[0])
    import avtk.verify as verify_module

    monkeypatch.setattr(verify_module, "speaker_embedding", lambda net, wave, path, device: np.zeros(16, np.float32))
    with pytest.raises(AvtkError) as err:
        verify_pair(setup["speaker"], a, a)
    assert str(err.value) == f"verify: embedding of utterance '{a}' is all zeros (no direction, so no cosine) " \
                             f"(2 utterances in all: '{a}', '{a}')"
