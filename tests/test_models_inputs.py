"""Model files with bad weights, read the way users read them: `avtk export` (through avtk.embed.load_network,
the one reader of avtk model files), `avtk import-model` and `avtk train --resume`. Each bad file gets one ERROR
line naming the file and the key, exit status 1, and no output left behind."""
import pytest
import torch

from avtk.cli import main as avtk_main
from avtk.embed import save_model
from avtk.models import build_encoder, build_network
from avtk.train.config import load_config


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def run(capsys, *args):
    """(exit status, the one ERROR line's message) of `avtk <args>` run in process."""
    capsys.readouterr()
    rc = avtk_main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if " ERROR " in line]
    assert len(lines) == 1, err
    return rc, lines[0].split(f" ERROR [avtk {args[0]}] ", 1)[1]


def tiny_model(path, edit):
    """A tiny ECAPA model file whose weights `edit` (a function of the state_dict) has changed."""
    cfg = load_config(None, ["model.encoder_args={in_dim: 80, channels: 16, embed_dim: 8, pooled: 48, attention: 8}"])
    weights = build_network(cfg["model"]).state_dict()
    edit(weights)
    save_model(path, weights, cfg, ["a", "b"])
    return path


def test_a_model_with_missing_unexpected_or_mis_shaped_keys_names_them(capsys, tmp_path):
    def damage(w):
        for key in [k for k in w if k.startswith("encoder.layer1.convs.")][:5]:
            del w[key]
        w["encoder.extra"] = torch.zeros(2)
        w["encoder.conv1.bias"] = torch.zeros(17)

    model, out = tiny_model(tmp_path / "m.pt", damage), tmp_path / "m.onnx"
    rc, message = run(capsys, "export", "--model", model, out)
    assert rc == 1 and message == (
        f"{model}: the weights do not fit the network of its config: 5 missing keys: "
        "encoder.layer1.convs.0.weight, encoder.layer1.convs.0.bias, encoder.layer1.convs.1.weight and 2 more; "
        "1 unexpected key: encoder.extra; 1 mis-shaped key: encoder.conv1.bias (file [17], network [16])")
    assert not out.exists() and not (tmp_path / "m.onnx.json").exists()


def test_import_model_refuses_a_nan_weight(capsys, tmp_path):
    with torch.device("meta"):
        layout = build_encoder("iresnet18", width=2, embed_dim=8).state_dict()
    state = {k: torch.ones(v.shape, dtype=v.dtype) for k, v in layout.items()}
    state["layer2.0.conv1.weight"].view(-1)[3] = float("nan")
    torch.save(state, tmp_path / "backbone.pth")
    out = tmp_path / "r18.pt"
    rc, message = run(capsys, "import-model", "--format", "insightface", tmp_path / "backbone.pth", out)
    n = state["layer2.0.conv1.weight"].numel()
    assert rc == 1 and message == (f"{tmp_path / 'backbone.pth'}: the weights hold NaN or infinite values (1 of the "
                                   f"{n} values of encoder.layer2.0.conv1.weight): the model is unusable")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ options

@pytest.mark.parametrize("option, message", [
    (["--num-mel-bins", "100000"], "num_mel_bins (--num-mel-bins) = 100000: too many for a 512-point FFT at 16000 Hz "
     "between 20 and 8000 Hz: 99490 mel bins cover no FFT bin (the first: 1); use fewer bins or a longer frame"),
    (["--frame-length-ms", "1e9"], "frame_length_ms (--frame-length-ms) = 1e+09: must be > 0 and <= 1000 (ms)"),
    (["--frame-shift-ms", "2000"], "frame_shift_ms (--frame-shift-ms) = 2000: must be > 0 and <= 1000 (ms)"),
    (["--device", "cuda:x"], "argument --device: 'cuda:x' is not a device (cpu, cuda, cuda:N or auto) "
     "(usage: avtk compute-fbank --help)"),
])
def test_compute_fbank_options_out_of_range(capsys, tmp_path, option, message):
    import numpy as np
    import soundfile

    soundfile.write(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    (tmp_path / "wav.scp").write_text(f"u1 {tmp_path / 'a.wav'}\n")
    out = tmp_path / "x.ark"
    rc, line = run(capsys, "compute-fbank", *option, f"scp:{tmp_path / 'wav.scp'}", f"ark:{out}")
    assert rc == 1 and line == message
    assert not out.exists()


@pytest.mark.parametrize("command", ["extract-embeddings", "verify", "extract-face-frames"])
def test_every_device_option_takes_the_one_device_type(capsys, command):
    rc, line = run(capsys, command, "--device", "gpu0", "a", "b", "c")
    assert rc == 1 and line.startswith("argument --device: 'gpu0' is not a device (cpu, cuda, cuda:N or auto)")


def test_device_type():
    import argparse

    from avtk.command import device

    assert [device(d) for d in ("cpu", "cuda", "cuda:1")] == ["cpu", "cuda", "cuda:1"]
    assert device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("cuda:", "cuda:x", "cuda:-1", "CPU", "cuda:١"):
        with pytest.raises(argparse.ArgumentTypeError):
            device(bad)
