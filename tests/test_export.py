"""avtk export: TorchScript and ONNX graphs with the front end inside, equal to the eager networks."""
import importlib.util
import json
import re

import numpy as np
import pytest
import torch

from avtk.embed import load_model
from avtk.errors import AvtkError
from avtk.export import FbankGraph, SeedGraph, export_model, load_exported
from avtk.features import KaldiFbank, SeedFrontend
from conftest import SMALL_FACE, SMALL_SPEAKER, avtk, write_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # deprecated in torch 2.13

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return {"speaker": write_model(root / "ecapa.pt", SMALL_SPEAKER),
            "face": write_model(root / "face.pt", SMALL_FACE, 1)}


def speech(lengths, seed):
    """A zero-padded batch of noisy harmonic signals and its lengths (numpy float32, int64)."""
    rng = np.random.default_rng(seed)
    wave = np.zeros((len(lengths), max(lengths)), np.float32)
    for i, n in enumerate(lengths):
        t = np.arange(n) / 16000
        f0 = rng.uniform(90, 250)
        x = sum(np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 6)) / h for h in range(1, 10))
        wave[i, :n] = 0.1 * x + 0.01 * rng.standard_normal(n)
    return wave, np.array(lengths, np.int64)


def eager_speech(net, wave, lengths):
    """The eager network one utterance at a time (unpadded), and on the padded batch with lengths."""
    with torch.inference_mode():
        single = np.concatenate([net(torch.from_numpy(wave[i:i + 1, :n])).numpy() for i, n in enumerate(lengths)])
        batch = net(torch.from_numpy(wave), torch.from_numpy(lengths)).numpy()
    return single, batch


@pytest.mark.parametrize("opts", [{}, {"snip_edges": False}, {"use_energy": True, "energy_floor": 1.0},
                                  {"window_type": "hamming", "preemphasis": 0.0, "remove_dc_offset": False},
                                  {"use_power": False, "num_mel_bins": 40, "high_freq": -400}])
def test_fbank_graph_reproduces_kaldi_fbank(opts):
    """Framing by index, one DFT matmul with the linear chain folded in: the same features and frame counts."""
    wave, lengths = (torch.from_numpy(a) for a in speech([16000, 12345, 401, 9000], 0))
    fbank = KaldiFbank(**opts)
    want, want_n = fbank(wave, lengths)
    got, got_n = FbankGraph(fbank)(wave, lengths)
    assert torch.equal(got_n, want_n)
    assert got.shape[1] >= want.shape[1] and not got[:, want.shape[1]:].any()  # extra frames are padding
    assert (got[:, :want.shape[1]] - want).abs().max() < 1e-3


def test_seed_graph_reproduces_the_seed_front_end():
    wave, lengths = (torch.from_numpy(a) for a in speech([16000, 12345, 2, 9000], 1))
    seed = SeedFrontend()
    want, want_n = seed(wave, lengths)
    got, got_n = SeedGraph(seed)(wave, lengths)
    assert torch.equal(got_n, want_n) and not got[:, want.shape[1]:].any()
    assert (got[:, :want.shape[1]] - want).abs().max() < 1e-3


def test_torchscript_speaker_and_face(models, tmp_path):
    out = tmp_path / "ecapa.ts"
    proc = avtk("export", "--model", models["speaker"], "--format", "torchscript", out)
    assert re.search(r"checked on inputs of shapes .*max \|exported - network\| = \S+", proc.stderr)
    net, cfg = load_model(models["speaker"])
    graph = torch.jit.load(str(out))  # (torch 2.13 deprecates TorchScript; it still loads and runs)
    # other lengths and batch sizes than the trace example (16000 and 11200 samples), padded and unpadded
    for lengths, seed in (([20000, 8000, 12345], 3), ([7777], 4), ([9000, 9000], 5)):
        wave, n = speech(lengths, seed)
        with torch.inference_mode():
            got = graph(torch.from_numpy(wave), torch.from_numpy(n)).numpy()
        single, batch = eager_speech(net, wave, n)
        assert np.abs(got - single).max() < 1e-4 and np.abs(got - batch).max() < 1e-4
    side = json.loads((tmp_path / "ecapa.ts.json").read_text())
    assert [(i["name"], i["dtype"], i["shape"]) for i in side["inputs"]] == [
        ("wave", "float32", ["batch", "samples"]), ("lengths", "int64", ["batch"])]
    assert side["sample_rate"] == 16000 and side["embed_dim"] == 16 and side["model"] == cfg["model"]
    assert side["parity"]["max_abs_diff"] < 1e-4
    extra = {"avtk.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["avtk.json"])["inputs"] == side["inputs"]

    meta = export_model(models["face"], tmp_path / "face.pt")  # format from the extension
    fnet, _ = load_model(models["face"])
    graph = torch.jit.load(str(tmp_path / "face.pt"))
    for batch in (3, 1):
        images = torch.from_numpy(np.random.default_rng(batch).integers(0, 256, (batch, 112, 112, 3), dtype=np.uint8))
        with torch.inference_mode():
            assert (graph(images) - fnet(images)).abs().max() < 1e-4
    assert meta["inputs"] == [{"name": "images", "dtype": "uint8", "shape": ["batch", 112, 112, 3],
                               "description": meta["inputs"][0]["description"]}]
    assert meta["channel_order"] == "RGB" and meta["encoder_channels"] == "rgb" and meta["embed_dim"] == 16


def test_onnx_speaker_and_face(models, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    out = tmp_path / "ecapa.onnx"
    export_model(models["speaker"], out, "onnx")
    model = onnx.load(str(out))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert json.loads({p.key: p.value for p in model.metadata_props}["avtk"])["sample_rate"] == 16000
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("wave", "tensor(float)", ["batch", "samples"]), ("lengths", "tensor(int64)", ["batch"])]
    net, _ = load_model(models["speaker"])
    worst = 0.0
    for lengths, seed in (([20000, 8000, 12345], 3), ([7777], 4)):
        wave, n = speech(lengths, seed)
        got = session.run(None, {"wave": wave, "lengths": n})[0]
        single, batch = eager_speech(net, wave, n)
        worst = max(worst, np.abs(got - single).max(), np.abs(got - batch).max())
    assert worst < 1e-4

    export_model(models["face"], tmp_path / "face.onnx")
    fnet, _ = load_model(models["face"])
    session = ort.InferenceSession(str(tmp_path / "face.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    for batch in (3, 1):
        images = np.random.default_rng(batch).integers(0, 256, (batch, 112, 112, 3), dtype=np.uint8)
        with torch.inference_mode():
            want = fnet(torch.from_numpy(images)).numpy()
        assert np.abs(session.run(None, {"images": images})[0] - want).max() < 1e-4

    seed_model = write_model(tmp_path / "seed.pt", SMALL_SPEAKER + ["model.frontend=seed"], 2)
    meta = export_model(seed_model, tmp_path / "seed.onnx")
    assert meta["frontend"] == "seed" and meta["parity"]["max_abs_diff"] < 1e-4


def test_bad_inputs_are_one_line(models, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    for path, message in ((text, f"{text}: not an avtk model file"),
                          (tmp_path / "missing.pt", f"model file {tmp_path}/missing.pt does not exist")):
        proc = avtk("export", "--model", path, "--format", "torchscript", tmp_path / "out.ts", check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and message in errors[0], proc.stderr
    torch.save({"weights": 1}, tmp_path / "dict.pt")
    with pytest.raises(AvtkError, match="not an avtk model file \\(expected the keys 'model' and 'config'"):
        export_model(tmp_path / "dict.pt", tmp_path / "o.ts")
    with pytest.raises(AvtkError, match="give --format"):
        export_model(models["speaker"], tmp_path / "o.bin")
    assert not list(tmp_path.glob("o*")) and not (tmp_path / "out.ts").exists()


def test_parity_of_nan_embeddings_is_an_error_not_0(monkeypatch):
    """max(0.0, nan) is 0.0: a graph (or network) giving NaN must fail the check, not report parity 0."""
    import avtk.export as export

    shape = (1, 16)
    checks = [(torch.zeros(1, 16000), torch.tensor([16000]))]
    monkeypatch.setattr(export, "_eager", lambda net, inputs, speaker: np.zeros(shape, np.float32))
    monkeypatch.setattr(export, "load_exported", lambda path, fmt: lambda *a: np.full(shape, np.nan, np.float32))
    with pytest.raises(AvtkError) as err:
        export._check("m.ts", "torchscript", None, checks, True, "m.ts")
    assert str(err.value) == ("m.ts: the exported graph gives NaN or infinite embeddings for an input of shape "
                              "(1, 16000): no parity can be measured")


DEVICE_CONSTANT = re.compile(r'prim::Constant\[value="(cpu|cuda[:0-9]*)"\]')


PEER_NETS = {  # small widths of the peers' networks (tests/test_models.py counts the full sizes)
    "resnet34": "{in_dim: 80, base_width: 4, embed_dim: 16}",
    "resnet221": "{in_dim: 80, base_width: 4, embed_dim: 16}",
    "campplus": "{in_dim: 80, base_width: 4, init_channels: 16, growth_rate: 8, bn_size: 2, embed_dim: 16}",
    "eres2netv2": "{in_dim: 80, base_width: 4, embed_dim: 16}",
}


@pytest.mark.usefixtures("one_thread")  # 2 threads on a loaded 2-core machine: 10x slower small convolutions
@pytest.mark.parametrize("kind", ["kaldi_fbank", "seed", "resnet34", "resnet221", "campplus", "eres2netv2", "face"])
def test_torchscript_graph_names_no_device(models, tmp_path, kind):
    """The exported graph creates its index and mask tensors from its inputs, so no device is baked in and the
    same file runs on a GPU (torch.arange(n, device=...) in a traced forward records a CPU constant)."""
    path = {"kaldi_fbank": models["speaker"], "face": models["face"]}.get(kind)
    if path is None:
        overrides = (SMALL_SPEAKER + ["model.frontend=seed"] if kind == "seed" else
                     [f"model.encoder={kind}", f"model.encoder_args={PEER_NETS[kind]}"])
        path = write_model(tmp_path / f"{kind}.pt", overrides, 3)
    meta = export_model(path, tmp_path / "m.ts")
    assert meta["parity"]["max_abs_diff"] < 1e-4
    graph = str(torch.jit.load(str(tmp_path / "m.ts")).inlined_graph)
    assert "aten::" in graph and not DEVICE_CONSTANT.findall(graph), [
        line.strip() for line in graph.splitlines() if "Device" in line][:5]
    if kind in ("resnet221", "campplus", "eres2netv2"):
        _check_peer_network_graphs(path, tmp_path)


def _check_peer_network_graphs(path, tmp_path):
    """The TorchScript graph and (with onnxruntime) the ONNX one of a peer network equal the eager network on
    longer, padded batches than export's own check: 5.3 s gives CAM++ 265 frames after its strided tdnn, three
    100-frame segments (the last of 65 frames), 2.1 s two."""
    net, _ = load_model(path)
    graphs = {"torchscript": tmp_path / "m.ts"}
    if importlib.util.find_spec("onnxruntime"):
        meta = export_model(path, tmp_path / "m.onnx")
        assert meta["parity"]["max_abs_diff"] < 1e-4
        graphs["onnx"] = tmp_path / "m.onnx"
    wave, n = speech([84800, 33600, 16000, 7777], 6)
    single, batch = eager_speech(net, wave, n)
    assert np.abs(single).max() > 0.1 and np.abs(single - batch).max() < 1e-4
    for fmt, graph in graphs.items():
        got = load_exported(graph, fmt)(wave, n)
        assert got.shape == single.shape and np.abs(got - single).max() < 1e-4, fmt
