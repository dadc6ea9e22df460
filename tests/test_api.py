"""The Python API (avtk.load_model, SpeakerModel, FaceModel, Verifier) against the commands users run:
extract-embeddings' embeddings within 1e-5 for wav, m4a, feats and frames input, avtk verify's lines exactly,
the README's example, foreign checkpoints through the importer, and one-line errors for bad input."""
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

import avtk
from avtk import cli
from avtk.calibration import train_model
from avtk.data.table import read_dict
from avtk.errors import AvtkError
from avtk.io.ark import open_reader
from conftest import REPO, SMALL_FACE, SMALL_SPEAKER, avtk as avtk_cmd, write_model

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    """A 4-utterance synthetic test set (wav, m4a copies, fbank features, aligned frames) and small random
    speaker and face models; the commands' embeddings of each input."""
    from avtk.io.media import write_audio

    root = tmp_path_factory.mktemp("api")
    avtk_cmd("make-synthetic-corpus", "--num-train-speakers", 1, "--num-test-speakers", 2, "--videos-per-speaker",
             2, "--utts-per-video", 1, "--min-duration", 1.5, "--max-duration", 2, "--no-raw-frames",
             root / "corpus", root / "data")
    data = root / "data/test"
    wav = read_dict(data / "wav.scp")
    m4a = {}
    for utt, path in wav.items():
        m4a[utt] = str(root / f"{utt}.m4a")
        write_audio(m4a[utt], sf.read(path, dtype="float32")[0], 16000)
    (root / "m4a.scp").write_text("".join(f"{u} {p}\n" for u, p in sorted(m4a.items())))
    speaker = write_model(root / "ecapa.pt", SMALL_SPEAKER)
    face = write_model(root / "face.pt", SMALL_FACE, 1)
    out = {"root": root, "data": data, "wav": wav, "m4a": m4a, "frames": read_dict(data / "frames.scp"),
           "utts": sorted(wav), "speaker": speaker, "face": face}
    assert cli.main(["compute-fbank", f"scp:{data / 'wav.scp'}", f"ark,scp:{root}/feats.ark,{root}/feats.scp"]) == 0
    for name, table, model in (("wav", data / "wav.scp", speaker), ("m4a", root / "m4a.scp", speaker),
                               ("feats", root / "feats.scp", speaker), ("frames", data / "frames.scp", face)):
        scp = root / f"emb_{name}.scp"
        assert cli.main(["extract-embeddings", "--model", str(model), f"scp:{table}",
                         f"ark,scp:{root}/emb_{name}.ark,{scp}"]) == 0
        out[f"emb_{name}"] = dict(open_reader(f"scp:{scp}"))
    out["feats"] = dict(open_reader(f"scp:{root / 'feats.scp'}"))
    return out


def close(a, b):
    return a.dtype == np.float32 and a.shape == b.shape and float(np.abs(a - b).max()) <= TOLERANCE


def test_embed_equals_extract_embeddings_for_wav_m4a_and_feats(setup):
    speaker = avtk.load_model(setup["speaker"])
    assert isinstance(speaker, avtk.SpeakerModel) and speaker.sample_rate == 16000 and speaker.embed_dim == 16
    utts = setup["utts"]
    for kind in ("wav", "m4a"):
        batch = speaker.embed_batch([setup[kind][u] for u in utts])
        assert batch.shape == (4, 16) and batch.dtype == np.float32
        for i, u in enumerate(utts):
            single = speaker.embed(setup[kind][u])
            assert close(single, setup[f"emb_{kind}"][u]) and close(batch[i], single), (kind, u)
    for u in utts:
        assert close(speaker.embed_features(setup["feats"][u]), setup["emb_feats"][u])
        assert np.array_equal(speaker.embed_features(torch.from_numpy(setup["feats"][u])),
                              speaker.embed_features(setup["feats"][u]))
    # m4a decodes to other samples than the wav (AAC is lossy), so its embeddings differ from the wav's
    assert not close(setup["emb_m4a"][utts[0]], setup["emb_wav"][utts[0]])


def test_arrays_tensors_rates_and_channels(setup, tmp_path):
    """An array, a tensor and int16 PCM of the file's samples embed as the file does; a 44.1 kHz stereo array
    as the same samples written to a float wav (resampled; channel 0, the default, channel 1, or the mean)."""
    speaker = avtk.load_model(setup["speaker"])
    path = setup["wav"][setup["utts"][0]]
    x, _ = sf.read(path, dtype="float32")
    pcm, _ = sf.read(path, dtype="int16")
    from_file = speaker.embed(path)
    for audio in (x, torch.from_numpy(x), pcm, x[None], np.stack([x, x]), x.astype(np.float64)):
        assert np.array_equal(speaker.embed(audio), from_file)
    from avtk.io.resample import resample

    up = resample(torch.from_numpy(x), 16000, 44100).numpy()
    stereo = np.stack([up, 0.5 * up])
    sf.write(tmp_path / "s.wav", stereo.T, 44100, subtype="FLOAT")
    assert np.array_equal(speaker.embed(stereo, sample_rate=44100), speaker.embed(tmp_path / "s.wav"))
    assert np.array_equal(speaker.embed(stereo, 44100, channel=1), speaker.embed(tmp_path / "s.wav", channel=1))
    e = speaker.embed(stereo, 44100)
    assert np.array_equal(e, speaker.embed(up, 44100))  # channel 0, as every command reads a stereo file
    assert close(speaker.embed(stereo, 44100, channel="mean"), speaker.embed(0.75 * up, 44100))
    assert close(speaker.embed_batch([stereo, path], sample_rate=44100)[0], e)
    assert speaker.score(e, e) == pytest.approx(1.0, abs=1e-6)
    b = setup["wav"][setup["utts"][2]]
    assert speaker.score(path, b) == speaker.score(from_file, speaker.embed(b))
    assert speaker.embed_batch([]).shape == (0, 16)


def verify_lines(capsys, *argv):
    """The (key, value) lines `avtk verify ARGV` prints (the cli's main, in this process)."""
    capsys.readouterr()
    assert cli.main(["verify", *map(str, argv)]) == 0
    return [tuple(line.split(": ", 1)) for line in capsys.readouterr().out.splitlines()]


def test_verify_command_and_verifier_agree_exactly(setup, tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 50)
    dev = np.stack([rng.normal(0.6, 0.1, 100) - 0.3 * (1 - labels), rng.normal(0.9, 0.05, 100) - 0.1 * (1 - labels)], 1)
    train_model("logreg", ["audio", "face"], dev, labels).save(tmp_path / "cal.yaml")
    speaker, face = avtk.load_model(setup["speaker"]), avtk.load_model(setup["face"])
    assert isinstance(face, avtk.FaceModel) and face.input_size == 112
    a, b = setup["utts"][0], setup["utts"][2]
    wav, frames = setup["wav"], setup["frames"]
    lines = verify_lines(capsys, "--model", setup["speaker"], "--face-model", setup["face"], "--calibration",
                         tmp_path / "cal.yaml", "--face-a", frames[a], "--face-b", frames[b], wav[a], wav[b])
    result = avtk.Verifier(speaker, face, tmp_path / "cal.yaml").verify(wav[a], wav[b], frames[a], frames[b])
    assert list(result.lines) == lines
    assert [k for k, _ in lines] == ["speaker_score", "face_score", "llr", "face_llr", "fused_llr", "decided_by",
                                     "llr_threshold", "decision"]
    assert result.decided_by == "fused_llr" and result.decision == ("same" if result.fused_llr > 0 else "different")
    assert f"{result.speaker_score:.4f}" == dict(lines)["speaker_score"] and result.same == (result.decision == "same")
    e = [speaker.embed(wav[u]) for u in (a, b)]
    assert result.speaker_score == speaker.score(*e) == speaker.score(wav[a], wav[b])
    assert result.face_score == float(np.dot(face.embed_faces(frames[a]), face.embed_faces(frames[b])))

    model = tmp_path / "m.pt"  # a stored threshold decides; no calibration
    shutil.copy(setup["speaker"], model)
    verify_lines(capsys, "--model", model, "--set-threshold", round(result.speaker_score - 0.001, 4))
    lines = verify_lines(capsys, "--model", model, wav[a], wav[b])
    result = avtk.Verifier(avtk.load_model(model)).verify(wav[a], wav[b])
    assert list(result.lines) == lines and result.decision == "same" and result.decided_by == "threshold"
    nothing = avtk.Verifier(speaker).verify(wav[a], wav[b])
    assert nothing.decision is None and nothing.same is None and nothing.lines[-1][0] == "note"
    qmf = train_model("logreg", ["audio"], dev[:, :1], labels)
    qmf.quality = [{"measure": "duration", "modality": None, "cap": 20.0}]
    with pytest.raises(AvtkError) as err:
        avtk.Verifier(speaker, calibration=qmf)
    assert str(err.value) == ("calibration: a calibration with quality measures (duration), which verify does not "
                              "compute for a pair; calibrate without them (avtk fuse --method logreg --model-out)")


def test_embed_faces_equals_extract_embeddings(setup):
    from avtk.face.frames import evenly_spaced, frame_paths, read_frame

    face = avtk.load_model(setup["face"])
    for u in setup["utts"]:
        from_dir = face.embed_faces(setup["frames"][u])
        assert close(from_dir, setup["emb_frames"][u])
        images = np.stack([read_frame(u, p) for p in evenly_spaced(frame_paths(u, setup["frames"][u]), 5)])
        assert np.array_equal(face.embed_faces(images), from_dir)
        assert np.array_equal(face.embed_faces(torch.from_numpy(images)), from_dir)
    assert face.embed_faces(images[0]).shape == (16,)


def test_foreign_checkpoints_load_through_the_importer(tmp_path, setup):
    """ECAPA-TDNN's pretrain.model layout names its format: load_model imports it as `avtk import-model`
    does. An insightface backbone without an AAM matrix (V-Glint or insightface: BGR or RGB) needs format=."""
    from test_import_model import ecapa_layout, iresnet_layout

    state = {f"speaker_encoder.{k}": v for k, v in ecapa_layout(64, 0, perturb_frontend=False).items()
             if k != "weight"}
    state["speaker_loss.weight"] = torch.randn(7, 192)
    torch.save(state, tmp_path / "pretrain.model")
    assert cli.main(["import-model", "--format", "ecapa-pretrain", str(tmp_path / "pretrain.model"),
                     str(tmp_path / "imported.pt")]) == 0
    direct, imported = avtk.load_model(tmp_path / "pretrain.model"), avtk.load_model(tmp_path / "imported.pt")
    assert isinstance(direct, avtk.SpeakerModel) and direct.config["source"]["format"] == "ecapa-pretrain"
    path = setup["wav"][setup["utts"][0]]
    assert np.array_equal(direct.embed(path), imported.embed(path))
    table = setup["data"] / "wav.scp"  # extract-embeddings loads the checkpoint the same way
    assert cli.main(["extract-embeddings", "--model", str(tmp_path / "pretrain.model"), f"scp:{table}",
                     f"ark,scp:{tmp_path}/e.ark,{tmp_path}/e.scp"]) == 0
    assert close(direct.embed(path), dict(open_reader(f"scp:{tmp_path}/e.scp"))[setup["utts"][0]])
    with pytest.raises(AvtkError, match="was trained on audio \\(data.input: wav, front end seed\\), not on feature"):
        direct.embed_features(np.zeros((200, 80), np.float32))

    torch.save(iresnet_layout("iresnet18", 5, width=4, embed_dim=16), tmp_path / "backbone.pth")
    with pytest.raises(AvtkError) as err:
        avtk.load_model(tmp_path / "backbone.pth")
    assert str(err.value) == (f"{tmp_path}/backbone.pth: an insightface iresnet backbone: give format='v-glint' "
                              "(BGR, as the seed fed V-Glint) or format='insightface' (RGB) to load it, or import "
                              "it with avtk import-model")
    rgb = avtk.load_model(tmp_path / "backbone.pth", format="insightface")
    assert isinstance(rgb, avtk.FaceModel) and rgb.config["model"]["channels"] == "rgb"


def error(call):
    with pytest.raises(AvtkError) as err:
        call()
    return str(err.value)


def test_bad_inputs_are_one_line_errors(setup, tmp_path):
    speaker, face = avtk.load_model(setup["speaker"]), avtk.load_model(setup["face"])
    x = sf.read(setup["wav"][setup["utts"][0]], dtype="float32")[0]
    nan = x.copy()
    nan[16005] = np.nan
    cases = [
        (lambda: avtk.load_model(tmp_path / "none.pt"), f"model file {tmp_path}/none.pt does not exist"),
        (lambda: speaker.embed(tmp_path / "none.wav"), f"audio file {tmp_path}/none.wav does not exist"),
        (lambda: speaker.embed(nan), "audio array audio has a NaN or infinite sample at sample 16005 (1.000 s)"),
        (lambda: speaker.embed(np.stack([x, x], 1)), f"audio array audio has shape ({len(x)}, 2): give (channels, "
                                                     "samples); transpose a (samples, channels) array (soundfile's "
                                                     "layout) with .T"),
        (lambda: speaker.embed(x[None, None]), f"audio array audio has shape (1, 1, {len(x)}): give (samples,) or "
                                               "(channels, samples)"),
        (lambda: speaker.embed(x.astype(np.int64)), "audio array audio has dtype int64: give float samples (full "
                                                    "scale +-1) or int16 PCM"),
        (lambda: speaker.embed(list(x)), "audio: audio must be a path, a numpy array or a torch tensor, not a list"),
        (lambda: speaker.embed(x[:300]), "audio array audio is too short: 300 samples give no feature frames"),
        (lambda: speaker.embed(x[:0]), "audio array audio has no samples"),
        (lambda: speaker.embed(x, sample_rate=0), "audio: sample_rate 0 is not a positive whole number of Hz"),
        (lambda: speaker.embed(np.stack([x, x]), channel=2), "audio array audio has 2 channel(s); channel 2 does "
                                                             "not exist"),
        (lambda: speaker.embed(x, channel="left"), "channel 'left': give 'mean' or a channel index (0, 1, ...)"),
        (lambda: speaker.embed_batch([x, x[:10]]), "audio array audios[1] is too short: 10 samples give no "
                                                   "feature frames"),
        (lambda: speaker.embed_features(np.zeros((50, 40), np.float32)),
         "features: features have 40 dimensions but the model expects 80"),
        (lambda: speaker.embed_features(np.full((50, 80), np.inf, np.float32)),
         "features: NaN or infinite value at row 0 (of 50), column 0 (4000 such values)"),
        (lambda: speaker.embed_features(np.zeros((0, 80), np.float32)), "features: the matrix has no frames"),
        (lambda: speaker.score(np.zeros(16, np.float32), x), "verify: embedding of utterance 'a' is all zeros (no "
                                                             "direction, so no cosine)"),
        (lambda: face.embed_faces(np.zeros((2, 64, 64, 3), np.uint8)), "faces: face images of shape (2, 64, 64, 3): "
                                                                       "give aligned RGB images (n, 112, 112, 3) or "
                                                                       "one (112, 112, 3) (align them with avtk "
                                                                       "extract-face-frames)"),
        (lambda: face.embed_faces(np.zeros((2, 112, 112, 3))), "faces: face images of dtype float64: give uint8 RGB "
                                                               "(0-255)"),
        (lambda: face.embed_faces(tmp_path), f"faces: {tmp_path} holds no frames (.jpg, .jpeg, .png)"),
        (lambda: avtk.Verifier(face), f"Verifier: speaker_model is a face model ({setup['face']}), not a "
                                      "SpeakerModel (avtk.load_model)"),
        (lambda: avtk.Verifier(speaker, speaker), f"Verifier: face_model is a speaker model ({setup['speaker']}), "
                                                  "not a FaceModel (avtk.load_model)"),
        (lambda: avtk.Verifier(speaker).verify(x, x, face_a=tmp_path, face_b=tmp_path),
         "face_a/face_b need a face model: Verifier(speaker_model, face_model)"),
        (lambda: avtk.Verifier(speaker, face).verify(x, x, face_a=tmp_path), "give both face_a and face_b, or "
                                                                             "neither"),
        (lambda: avtk.Verifier(speaker, prior=1.0), "--prior 1.0: must be in (0, 1)"),
    ]
    assert [error(call) for call, _ in cases] == [message for _, message in cases]


def test_readme_python_example_runs(setup, tmp_path, monkeypatch, capsys):
    """The README's Python block, run as written in a copy of the layout egs/mini/run.sh leaves."""
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.+?)\n```", text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0], re.S)[1]
    run_sh = (REPO / "egs/mini/run.sh").read_text()
    assert "exp/ecapa/avg_model.pt" in run_sh and "exp/iresnet/avg_model.pt" in run_sh and "data=data" in run_sh
    for name, model in (("ecapa", setup["speaker"]), ("iresnet", setup["face"])):
        (tmp_path / "exp" / name).mkdir(parents=True)
        shutil.copy(model, tmp_path / "exp" / name / "avg_model.pt")
    (tmp_path / "data").mkdir()
    shutil.copytree(setup["data"], tmp_path / "data/test")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    exec(compile(code, "README.md (Python)", "exec"), {"__name__": "__main__"})
    cosine, verdict = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"cosine -?0\.\d+", cosine), cosine
    assert re.fullmatch(r"(target|nontarget) -?0\.\d+ -?[01]\.\d+ None", verdict), verdict


def test_a_stereo_file_embeds_as_extract_embeddings_embeds_it(setup, tmp_path):
    """One rule for multi-channel audio: the API, `verify` and `extract-embeddings` take channel 0."""
    x, _ = sf.read(setup["wav"][setup["utts"][0]], dtype="float32")
    sf.write(tmp_path / "st.wav", np.stack([x, 0.3 * x[::-1]], 1), 16000, subtype="FLOAT")
    (tmp_path / "wav.scp").write_text(f"st {tmp_path}/st.wav\n")
    assert cli.main(["extract-embeddings", "--model", str(setup["speaker"]), f"scp:{tmp_path}/wav.scp",
                     f"ark,scp:{tmp_path}/e.ark,{tmp_path}/e.scp"]) == 0
    ours = dict(open_reader(f"scp:{tmp_path}/e.scp"))["st"]
    speaker = avtk.load_model(setup["speaker"])
    assert close(speaker.embed(tmp_path / "st.wav"), ours)
    assert not close(speaker.embed(tmp_path / "st.wav", channel="mean"), ours)
