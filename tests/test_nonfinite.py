"""Issue 12, kind 1: NaN, infinities and absurd amplitudes stop where they enter (audio, features, model weights,
network outputs, scores), with one ERROR line naming the file and the utterance, exit 1 and no output."""
import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch

from avtk.errors import AvtkError
from avtk.io.audio import load_audio
from avtk.verify import calibrated_llr, decide
from conftest import SMALL_SPEAKER, avtk, write_model


def float_wav(path, bad_at=None, value=np.nan, seconds=1.0, seed=0):
    """A float32 wav of noise with `value` written at sample `bad_at`."""
    x = (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    if bad_at is not None:
        x[bad_at] = value
    sf.write(path, x, 16000, subtype="FLOAT")
    return path


def one_error(proc, command):
    """The one ERROR line of a failed `avtk COMMAND` run (exit 1, no traceback)."""
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1, proc.stderr
    assert f"ERROR [avtk {command}] " in errors[0]
    return errors[0].split(f"ERROR [avtk {command}] ", 1)[1]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """A data dir of a good utterance and a float wav with a NaN at sample 8000; a model; its NaN twin."""
    root = tmp_path_factory.mktemp("nonfinite")
    good, nan = float_wav(root / "good.wav"), float_wav(root / "nan.wav", 8000)
    data = root / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"u1 {good}\nu2 {nan}\n")
    (data / "utt2spk").write_text("u1 s1\nu2 s1\n")
    (data / "spk2utt").write_text("s1 u1 u2\n")
    model = write_model(root / "model.pt", SMALL_SPEAKER)
    blob = torch.load(model, weights_only=False)
    name = next(k for k, v in blob["model"].items() if v.is_floating_point() and v.numel() > 10)
    blob["model"][name].view(-1)[3] = float("nan")
    torch.save(blob, root / "nan_model.pt")
    return {"root": root, "data": data, "good": good, "nan": nan, "model": model,
            "nan_model": root / "nan_model.pt", "param": name, "numel": blob["model"][name].numel()}


def test_compute_fbank_refuses_nan_samples(bad):
    out = bad["root"] / "fbank"
    proc = avtk("compute-fbank", f"scp:{bad['data']}/wav.scp", f"ark,scp:{out}/f.ark,{out}/f.scp", check=False)
    assert one_error(proc, "compute-fbank") == \
        f"utterance u2: audio file {bad['nan']} has a NaN or infinite sample at sample 8000 (0.500 s)"
    assert not (out / "f.ark").exists() and not (out / "f.scp").exists()


def test_absurd_amplitudes_and_infinities_in_files_and_pipes(tmp_path):
    """Float samples beyond ±32768 (the 16-bit full scale) are no audio; 32768 itself is accepted."""
    huge = float_wav(tmp_path / "huge.wav", 100, 1e30)
    with pytest.raises(AvtkError) as err:
        load_audio("u1", str(huge))
    assert str(err.value) == (f"utterance u1: audio file {huge} has a sample of 1e+30, beyond ±32768 (the 16-bit "
                              "full scale) at sample 100 (0.006 s)")
    inf = float_wav(tmp_path / "inf.wav", 16, -np.inf)
    with pytest.raises(AvtkError) as err:
        load_audio("u2", f"cat {inf} |")
    assert str(err.value) == (f"utterance u2: output of command 'cat {inf}' has a NaN or infinite sample at sample "
                              "16 (0.001 s)")
    scaled = float_wav(tmp_path / "scaled.wav", 5, 32768.0)  # a float wav written at 16-bit scale
    assert load_audio("u3", str(scaled))[5] == 32768.0


def test_extract_baseline_refuses_nan_samples(bad):
    out = bad["root"] / "base"
    proc = avtk("extract-baseline", bad["data"], f"ark,scp:{out}.ark,{out}.scp", check=False)
    assert one_error(proc, "extract-baseline") == \
        f"utterance u2: audio file {bad['nan']} has a NaN or infinite sample at sample 8000 (0.500 s)"
    assert not (bad["root"] / "base.ark").exists() and not (bad["root"] / "base.scp").exists()


def test_extract_embeddings_refuses_a_nan_feature_row_and_nan_weights(bad):
    feats = bad["root"] / "feats"
    rng = np.random.default_rng(0)
    table = {"u1": rng.standard_normal((120, 80)).astype(np.float32),
             "u2": rng.standard_normal((150, 80)).astype(np.float32)}
    table["u2"][37, 5] = np.inf
    kaldiio.save_ark(f"{feats}.ark", table, scp=f"{feats}.scp")
    out = bad["root"] / "emb"
    proc = avtk("extract-embeddings", "--model", bad["model"], f"scp:{feats}.scp", f"ark,scp:{out}.ark,{out}.scp",
                check=False)
    assert one_error(proc, "extract-embeddings") == \
        f"scp:{feats}.scp: key 'u2' ({feats}.scp:2): NaN or infinite value at row 37 (of 150), column 5"
    assert not (bad["root"] / "emb.ark").exists() and not (bad["root"] / "emb.scp").exists()
    del table["u2"]
    kaldiio.save_ark(f"{feats}.ark", table, scp=f"{feats}.scp")
    proc = avtk("extract-embeddings", "--model", bad["nan_model"], f"scp:{feats}.scp",
                f"ark,scp:{out}.ark,{out}.scp", check=False)
    assert one_error(proc, "extract-embeddings") == \
        f"{bad['nan_model']}: the weights hold NaN or infinite values (1 of the {bad['numel']} values of " \
        f"{bad['param']}): the model is unusable"
    assert not (bad["root"] / "emb.ark").exists()


def test_export_of_nan_weights_is_an_error_not_parity_0(bad):
    out = bad["root"] / "model.ts"
    proc = avtk("export", "--model", bad["nan_model"], out, check=False)
    assert one_error(proc, "export") == \
        f"{bad['nan_model']}: the weights hold NaN or infinite values (1 of the {bad['numel']} values of " \
        f"{bad['param']}): the model is unusable"
    assert not out.exists() and not (bad["root"] / "model.ts.json").exists()


def test_verify_prints_no_score_and_no_decision_for_nan_audio(bad):
    avtk("verify", "--model", bad["model"], "--set-threshold", "0.5")
    proc = avtk("verify", "--model", bad["model"], bad["good"], bad["nan"], check=False)
    assert one_error(proc, "verify") == \
        f"audio file {bad['nan']} has a NaN or infinite sample at sample 8000 (0.500 s)"
    assert proc.stdout == ""


def test_no_decision_or_llr_from_a_non_finite_number():
    with pytest.raises(AvtkError, match=r"^the speaker score is nan, not a finite number: no decision is made$"):
        decide(float("nan"), {"threshold": 0.5})
    with pytest.raises(AvtkError, match="the stored threshold is inf, not a finite number"):
        decide(0.3, {"threshold": float("inf")})
    with pytest.raises(AvtkError, match="the fused llr is -inf"):
        decide(0.3, None, 1.0, float("-inf"))
    assert decide(0.3, {"threshold": 0.5})[-1] == ("decision", "different")

    class Model:  # a calibration would read NaN as "missing" and calibrate the other modality alone
        modalities = ["audio", "face"]

    with pytest.raises(AvtkError, match="the audio score is nan"):
        calibrated_llr(Model(), {"audio": float("nan"), "face": 0.2})


def test_metrics_and_calibration_refuse_non_finite_scores():
    from avtk.calibration import train_model
    from avtk.metrics import cllr, eer, min_dcf

    labels = np.array([1, 0, 1, 0])
    with pytest.raises(ValueError, match="scores must be finite numbers: trial 2 has nan"):
        eer([0.9, np.nan, 0.8, 0.1], labels)
    with pytest.raises(ValueError, match="trial 1 has inf"):
        min_dcf([np.inf, 0.2, 0.8, 0.1], labels)
    with pytest.raises(ValueError, match="LLRs must be numbers: trial 3 has nan"):
        cllr([1.0, -1.0, np.nan, 0.0], labels)
    assert cllr([np.inf, -np.inf, np.inf, -np.inf], labels) == 0.0  # certainty is a number
    scores = np.array([[0.9, 0.5], [0.1, np.nan], [0.8, np.inf], [0.2, 0.1]])
    with pytest.raises(AvtkError, match=r"^face score of trial 3 is inf: scores must be finite"):
        train_model("zmean", ["audio", "face"], scores)
