"""Export a trained network, front end included, as a TorchScript or ONNX graph for use outside avtk.

The graph computes what `SpeakerNet.forward` / `FaceNet.forward` compute, so a deployment needs no avtk:

speaker model (a SpeakerNet)
    inputs  `wave`    float32 (batch, samples): 16 kHz audio in [-1, 1] (16-bit PCM / 32768), zero-padded
            `lengths` int64 (batch,): valid samples of each row (for one utterance: [samples])
    output  `embedding` float32 (batch, embed_dim); a padded batch gives each row the embedding it gets alone.
    Every row needs at least one frame (Kaldi fbank with snip_edges: 400 samples, 25 ms).
face model (a FaceNet)
    input   `images`  uint8 (batch, 112, 112, 3): aligned faces (insightface's 5-point template), RGB, the
            pixel normalisation and, for `channels: bgr` models, the channel swap happen inside the graph
    output  `embedding` float32 (batch, embed_dim)
Batch and samples are dynamic axes.

Export-friendly front end. torch's ONNX exporter has no `aten::fft_rfft` at opset 17 and exports `unfold`
only for a static input length, and the eager front ends size their outputs from `lengths.max()` (data-
dependent, so a trace would freeze it). `FbankGraph` and `SeedGraph` recompute `KaldiFbank` and
`SeedFrontend` with operations that trace with dynamic shapes (tested against them, within 1e-3 on log
features):

* the number of frames comes from the padded length (frames past each row's count are zeroed, as the eager
  front ends do, and every encoder masks them);
* frames are gathered by an index matrix;
* the whole per-frame chain, which is linear (scaling by 32768, DC removal, pre-emphasis, the window, the DFT),
  is one float64-designed matrix per real and imaginary part, so the spectrum is two matmuls;
* dither is left out (export is for inference; the eager model dithers only when configured to).

The encoders take the masked path when a batch is padded; the trace example is a padded batch, so the graph
always masks (on an unpadded batch the masked path computes the same values as the plain one).

Tracing, not scripting: the encoders use Python constructs (error messages, keyword modules) that TorchScript
cannot compile, and tracing with shapes taken from `wave.shape` records dynamic shape arithmetic. Every export
is then run again on inputs of other batch sizes and lengths than the trace example and compared with the
eager network one utterance at a time (the result goes to the log and to the sidecar's `parity`); a graph
that does not match fails the export.

Devices: one graph for every device. The trace runs on the CPU, but nothing in the graph names a device:
the index and mask tensors it creates (frame starts, valid-frame masks, the encoders' padding masks) are built
from its inputs with `avtk.features.fbank.positions` (ones_like + cumsum) and constant index vectors are
buffers, never with `torch.arange(..., device=...)`, which TorchScript would record as a CPU constant. So
`torch.jit.load(path, map_location="cuda")` runs on a GPU with inputs there (tests/test_export.py scans the
traced graphs for device constants); an ONNX graph has no device (onnxruntime's CUDA provider runs it).

ONNX uses torch's TorchScript-based exporter (`dynamo=False`), which needs only the `onnx` package (the
torch.export-based one needs onnxscript and cannot export the data-dependent checks in the encoders); opset 17.

Next to the output, `OUT.json` (the sidecar) records the inputs and outputs (names, dtypes, shapes), the
sample rate, the face channel order and size, the embedding dimension, the avtk config's `model` section and
any `verify` threshold stored in the model file. The same JSON is embedded in the graph: as the extra file
`avtk.json` of a TorchScript archive, as the metadata property `avtk` of an ONNX model.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings

import numpy as np
import torch
from torch import nn

from avtk import __version__
from avtk.errors import AvtkError
from avtk.features.fbank import FLOAT_EPSILON, KaldiFbank, positions, reflect_index
from avtk.features.seed_frontend import LOG_OFFSET, SeedFrontend, _reflect_no_edge
from avtk.io.atomic import atomic_group, atomic_open, atomic_path

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
OPSET = 17
EXTENSIONS = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript",
              ".jit": "torchscript", ".torchscript": "torchscript"}
TOLERANCE = 1e-4  # largest |exported - eager| accepted, relative to max(1, largest |embedding|)
INSTALL_ONNX = "pip install 'avtk[onnx]' (the onnx and onnxruntime packages)"


def _dft_basis(frame_matrix, n_fft, first, bins):
    """(rows, bins) real and imaginary parts of the DFT of the processed frames.

    frame_matrix: (rows, L) float64, row i = the processed frame (before the DFT) of the unit frame e_i;
    its column j sits at DFT position first + j of the n_fft points.
    """
    n = torch.arange(frame_matrix.shape[1], dtype=torch.int64) + first
    k = torch.arange(bins, dtype=torch.int64)
    angle = (2.0 * math.pi / n_fft) * torch.remainder(n[:, None] * k[None, :], n_fft).to(torch.float64)
    return frame_matrix @ torch.cos(angle), -(frame_matrix @ torch.sin(angle))


class FbankGraph(nn.Module):
    """`KaldiFbank` (dither 0) with static-shape operations: (wave (B, T), lengths (B,)) -> (feats, counts).

    Frames: 1 + T // shift from the padded length (the input is padded by one window, so there is at least
    one); the spectrum of bins 0 .. n_fft/2 - 1 (Kaldi's mel banks give the Nyquist bin no weight).
    """

    def __init__(self, fbank: KaldiFbank):
        super().__init__()
        length, self.shift, n_fft = fbank.frame_length, fbank.frame_shift, fbank.n_fft
        self.length, self.snip_edges = length, fbank.snip_edges
        self.use_energy, self.use_power = fbank.use_energy, fbank.use_power
        self.energy_floor = fbank.energy_floor
        self.remove_dc_offset = fbank.remove_dc_offset
        frame = torch.eye(length, dtype=torch.float64) * 32768.0
        if fbank.remove_dc_offset:
            frame = frame - frame.mean(dim=1, keepdim=True)
        p = fbank.preemphasis
        if p != 0.0:
            frame = torch.cat([frame[:, :1] * (1.0 - p), frame[:, 1:] - p * frame[:, :-1]], dim=1)
        frame = frame * fbank.window.double()
        bins = n_fft // 2
        real, imag = _dft_basis(frame, n_fft, 0, bins)
        self.register_buffer("dft_real", real.float(), persistent=False)
        self.register_buffer("dft_imag", imag.float(), persistent=False)
        self.register_buffer("mel_fb", fbank.mel_fb[:bins].clone(), persistent=False)
        self.register_buffer("offsets", torch.arange(length), persistent=False)

    def num_frames(self, lengths):
        if self.snip_edges:
            return torch.where(lengths < self.length, torch.zeros_like(lengths),
                               1 + torch.div(lengths - self.length, self.shift, rounding_mode="floor"))
        return torch.div(lengths + self.shift // 2, self.shift, rounding_mode="floor")

    def forward(self, wave, lengths):
        wave = wave.float()
        offsets = self.offsets
        if self.snip_edges:
            wave = torch.nn.functional.pad(wave, (0, self.length))
            frames = 1 + (wave.shape[1] - self.length) // self.shift
            starts = positions(wave[0])[:frames] * self.shift  # frames <= padded length
            windows = wave[:, starts[:, None] + offsets[None, :]]  # (B, F, L)
        else:
            frames = (wave.shape[1] + self.shift // 2) // self.shift
            starts = positions(wave[0])[:frames] * self.shift + (self.shift // 2 - self.length // 2)
            pos = (starts[:, None] + offsets[None, :]).reshape(1, -1)
            idx = reflect_index(pos, lengths.clamp_min(1)[:, None])
            windows = torch.gather(wave, 1, idx).reshape(wave.shape[0], -1, self.length)
        real = torch.matmul(windows, self.dft_real)
        imag = torch.matmul(windows, self.dft_imag)
        spec = real * real + imag * imag
        if not self.use_power:
            spec = spec.sqrt()
        feats = torch.matmul(spec, self.mel_fb).clamp_min(FLOAT_EPSILON).log()
        if self.use_energy:
            x = windows * 32768.0
            if self.remove_dc_offset:
                x = x - x.mean(dim=-1, keepdim=True)
            energy = (x * x).sum(-1).clamp_min(FLOAT_EPSILON).log()
            if self.energy_floor > 0.0:
                energy = energy.clamp_min(math.log(self.energy_floor))
            feats = torch.cat([energy.unsqueeze(-1), feats], dim=-1)
        counts = self.num_frames(lengths)
        valid = positions(feats[..., 0]) < counts[:, None]
        return feats.masked_fill(~valid.unsqueeze(-1), 0.0), counts


class SeedGraph(nn.Module):
    """`SeedFrontend` with static-shape operations: (wave (B, T), lengths (B,)) -> (feats, counts).

    Frames: 1 + T // 160 from the padded length. Rows need at least 2 samples (the pre-emphasis reflects x[1]).
    """

    def __init__(self, seed: SeedFrontend):
        super().__init__()
        spectrogram = seed.torchfbank[1].spectrogram
        self.n_fft, self.win, self.hop = spectrogram.n_fft, spectrogram.win_length, spectrogram.hop_length
        coeffs = seed.torchfbank[0].flipped_filter.detach().double().view(-1)
        self.prev, self.cur = float(coeffs[0]), float(coeffs[1])
        self.left = (self.n_fft - self.win) // 2
        frame = torch.diag(spectrogram.window.detach().double())
        real, imag = _dft_basis(frame, self.n_fft, self.left, self.n_fft // 2 + 1)
        self.register_buffer("dft_real", real.float(), persistent=False)
        self.register_buffer("dft_imag", imag.float(), persistent=False)
        self.register_buffer("mel_fb", seed.torchfbank[1].mel_scale.fb.detach().clone(), persistent=False)
        self.register_buffer("offsets", torch.arange(self.win), persistent=False)

    def forward(self, wave, lengths):
        valid_samples = positions(wave) < lengths[:, None]
        x = wave.float().masked_fill(~valid_samples, 0.0)
        x = torch.cat([self.cur * x[:, :1] + self.prev * x[:, 1:2], self.cur * x[:, 1:] + self.prev * x[:, :-1]],
                      dim=1)
        frames = 1 + wave.shape[1] // self.hop
        starts = positions(wave[0])[:frames] * self.hop + (self.left - self.n_fft // 2)  # frames <= samples
        pos = (starts[:, None] + self.offsets[None, :]).reshape(1, -1)
        idx = _reflect_no_edge(pos, lengths.clamp_min(1)[:, None])
        windows = torch.gather(x, 1, idx).reshape(wave.shape[0], -1, self.win)
        real = torch.matmul(windows, self.dft_real)
        imag = torch.matmul(windows, self.dft_imag)
        feats = (torch.matmul(real * real + imag * imag, self.mel_fb) + LOG_OFFSET).log()
        counts = torch.where(lengths > 0, 1 + torch.div(lengths, self.hop, rounding_mode="floor"),
                             torch.zeros_like(lengths))
        valid = (positions(feats[..., 0]) < counts[:, None]).unsqueeze(-1)
        feats = feats.masked_fill(~valid, 0.0)
        mean = feats.sum(1, keepdim=True) / counts.clamp_min(1).view(-1, 1, 1).to(feats.dtype)
        return (feats - mean).masked_fill(~valid, 0.0), counts


def export_frontend(frontend):
    """The static-shape twin of a speaker front end (FbankGraph or SeedGraph)."""
    if isinstance(frontend, KaldiFbank):
        return FbankGraph(frontend)
    if isinstance(frontend, SeedFrontend):
        return SeedGraph(frontend)
    raise AvtkError(f"front end {type(frontend).__name__} has no export path (kaldi_fbank and seed do)")


def min_samples(frontend):
    """The fewest samples that give one frame."""
    if isinstance(frontend, KaldiFbank) and frontend.snip_edges:
        return frontend.frame_length
    if isinstance(frontend, KaldiFbank):
        return max(1, frontend.frame_shift - frontend.frame_shift // 2)
    return 2


class SpeakerGraph(nn.Module):
    """(wave (B, T) float32, lengths (B,) int64) -> embeddings: the export-friendly front end, then the
    network's own mean normalisation and encoder."""

    def __init__(self, net):
        super().__init__()
        self.frontend = export_frontend(net.frontend)
        self.net = net

    def forward(self, wave, lengths):
        feats, counts = self.frontend(wave, lengths)
        return self.net.encode(self.net.normalize(feats, counts), counts)


class FaceGraph(nn.Module):
    """(images (B, H, W, 3) uint8 RGB) -> embeddings: the FaceNet as it is."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images):
        return self.net(images)


# ---------------------------------------------------------------------------------------------- examples


def _waves(lengths, seed):
    """A zero-padded batch of speech-like test signals (harmonics of a random F0 plus noise) and its lengths."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(lengths), max(lengths)), np.float32)
    for i, n in enumerate(lengths):
        t = np.arange(n) / 16000.0
        phase = 2 * np.pi * rng.uniform(90.0, 250.0) * t + 3.0 * np.sin(2 * np.pi * 4.0 * t)
        x = sum(np.sin(h * phase) / h for h in range(1, 12))
        out[i, :n] = 0.1 * x + 0.01 * rng.standard_normal(n)
    return torch.from_numpy(out), torch.tensor(lengths, dtype=torch.int64)


def _images(batch, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), generator=g, dtype=torch.uint8)


def _examples(net, speaker):
    """(trace example, [check inputs]): the check inputs have other batch sizes and lengths than the example."""
    if speaker:
        trace = _waves([16000, 11200], 0)
        checks = [_waves([24000, 17360, 8000], 1), _waves([12001], 2)]
        return trace, checks
    size = net.input_size
    return (_images(2, size, 0),), [(_images(3, size, 1),), (_images(1, size, 2),)]


@torch.inference_mode()
def _eager(net, inputs, speaker):
    """The eager network's embeddings of check inputs: speech one utterance at a time, unpadded."""
    if not speaker:
        return net(inputs[0]).float().numpy()
    wave, lengths = inputs
    return np.concatenate([net(wave[i:i + 1, :int(n)]).float().numpy() for i, n in enumerate(lengths)])


# ---------------------------------------------------------------------------------------------- export


def load_exported(path, fmt=None):
    """A function (numpy arrays...) -> numpy embeddings running an exported graph (torch.jit or onnxruntime)."""
    fmt = fmt or guess_format(path)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
            module = torch.jit.load(os.fspath(path), map_location="cpu")

        def run_ts(*arrays):
            with torch.inference_mode():
                return module(*(torch.from_numpy(np.asarray(a)) for a in arrays)).numpy()

        return run_ts
    try:
        import onnxruntime as ort
    except ImportError:
        raise AvtkError(f"running {path} needs onnxruntime: {INSTALL_ONNX}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing run raises; its message is reported once, by the caller
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run_onnx(*arrays):
        return session.run(None, {n: np.asarray(a) for n, a in zip(names, arrays)})[0]

    return run_onnx


def guess_format(path):
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in EXTENSIONS:
        raise AvtkError(f"{path}: cannot tell the format from the extension {ext or '(none)'}; give --format "
                        f"({' or '.join(FORMATS)})")
    return EXTENSIONS[ext]


def _trace(graph, example):
    # The tracer warns about every Python bool taken from a tensor; the parity check is the real test.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(graph, example, check_trace=False)


def _onnx_export(graph, example, path, speaker, meta):
    try:
        import onnx
    except ImportError:
        raise AvtkError(f"exporting to ONNX needs the onnx package: {INSTALL_ONNX}") from None
    if speaker:
        names = ["wave", "lengths"]
        axes = {"wave": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}, "embedding": {0: "batch"}}
    else:
        names = ["images"]
        axes = {"images": {0: "batch"}, "embedding": {0: "batch"}}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice, the tracer's warnings
            torch.onnx.export(graph, example, path, dynamo=False, input_names=names, output_names=["embedding"],
                              dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)
    except Exception as err:  # the exporter raises many types; the message is what a user can act on
        raise AvtkError(f"ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    model = onnx.load(path)
    onnx.helper.set_model_props(model, {"avtk": _json(meta)})
    onnx.save(model, path)


def describe(net, cfg, fmt, out_path, model_path, blob):
    """The sidecar: what the exported graph takes and gives, and where it came from."""
    from avtk.verify import is_face, stored_threshold

    speaker = not is_face(net)
    if speaker:
        frontend = net.frontend
        dim = net.encoder.embed_dim
        inputs = [
            {"name": "wave", "dtype": "float32", "shape": ["batch", "samples"],
             "description": f"mono audio at {frontend.sample_rate} Hz, float in [-1, 1] (16-bit PCM / 32768), "
                            "rows zero-padded to the longest"},
            {"name": "lengths", "dtype": "int64", "shape": ["batch"],
             "description": "valid samples of each row (one utterance: [samples])"},
        ]
        extra = {"modality": "speech", "sample_rate": int(frontend.sample_rate),
                 "min_samples": min_samples(frontend), "frontend": cfg["model"]["frontend"]}
    else:
        dim = net.encoder.embed_dim
        size = int(net.input_size)
        inputs = [{"name": "images", "dtype": "uint8", "shape": ["batch", size, size, 3],
                   "description": f"aligned {size}x{size} faces (insightface 5-point template), RGB, "
                                  "height x width x channel"}]
        extra = {"modality": "face", "channel_order": "RGB", "image_size": size,
                 "encoder_channels": net.channels,
                 "normalisation": "(pixel / 255 - 0.5) / 0.5 inside the graph"
                                  + ("; the graph swaps RGB to BGR for the encoder" if net.channels == "bgr" else "")}
    meta = {
        "format": fmt,
        "file": os.path.basename(os.fspath(out_path)),
        "avtk_version": __version__,
        "source_model": os.path.abspath(os.fspath(model_path)),
        "inputs": inputs,
        "outputs": [{"name": "embedding", "dtype": "float32", "shape": ["batch", int(dim)]}],
        "embed_dim": int(dim),
        **extra,
        "model": cfg["model"],
    }
    if fmt == "onnx":
        meta["opset"] = OPSET
    threshold = stored_threshold(blob)
    if threshold:
        meta["verify"] = threshold
    return meta


def export_model(model_path, out_path, fmt=None, check=True):
    """Export the avtk model file `model_path` to `out_path` (TorchScript or ONNX) and write `out_path`.json.

    Returns the sidecar dict (with `parity`: the largest |exported - eager| on the check inputs, when checked).
    """
    from avtk.embed import load_network
    from avtk.verify import is_face

    fmt = fmt or guess_format(out_path)
    if fmt not in FORMATS:
        raise AvtkError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    net, cfg, blob = load_network(model_path)
    if getattr(net, "modality", None) == "audio-visual":
        raise AvtkError(f"{model_path}: a joint audio-visual network (gated_fusion) is not exported: it embeds "
                        "two networks' embeddings, not audio or images; use avtk extract-joint-embeddings")
    speaker = not is_face(net)
    if speaker and getattr(net.frontend, "dither", 0.0):
        log.warning("%s: the front end dithers (dither %g); the exported graph does not", model_path,
                    net.frontend.dither)
        net.frontend.dither = 0.0
    graph = (SpeakerGraph(net) if speaker else FaceGraph(net)).eval()
    example, checks = _examples(net, speaker)
    meta = describe(net, cfg, fmt, out_path, model_path, blob)
    out_path = os.fspath(out_path)
    try:  # the graph and its sidecar as one group, checked against the inputs (the model) before the export
        with atomic_group(out_path, out_path + ".json"), atomic_path(out_path) as tmp:
            if fmt == "torchscript":
                traced = _trace(graph, example)
                with warnings.catch_warnings(), open(tmp, "wb") as f:  # a file: a full disk is an OSError
                    warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
                    torch.jit.save(traced, f, _extra_files={"avtk.json": _json(meta)})
            else:
                _onnx_export(graph, example, tmp, speaker, meta)
            if check:
                meta["parity"] = _check(tmp, fmt, net, checks, speaker, out_path)
            # in the group: a sidecar that cannot be written leaves no graph without its description
            with atomic_open(out_path + ".json", "w", encoding="utf-8") as f:
                f.write(_json(meta, indent=2) + "\n")
    except OSError as err:
        raise AvtkError(f"cannot write {err.filename or out_path}: {err.strerror or err}") from None
    return meta


def _json(meta, indent=None):
    return json.dumps(meta, sort_keys=indent is None, indent=indent, default=str)


def _check(path, fmt, net, checks, speaker, name):
    """Run the exported graph on the check inputs; compare with the eager network one utterance at a time."""
    try:
        run = load_exported(path, fmt)
    except AvtkError as err:
        log.warning("%s not checked: %s", name, err)
        return {"checked": False, "reason": str(err)}
    worst, scale, shapes = 0.0, 1.0, []
    for inputs in checks:
        want = _eager(net, inputs, speaker)
        try:
            got = run(*(t.numpy() for t in inputs))
        except Exception as err:  # onnxruntime's and torch.jit's failures have no common type
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise AvtkError(f"{name}: the exported graph fails on an input of shape {tuple(inputs[0].shape)} "
                            f"(the trace example's was different): {first}") from None
        if got.shape != want.shape:
            raise AvtkError(f"{name}: the exported graph gives embeddings of shape {got.shape} for input "
                            f"{tuple(inputs[0].shape)}, the network {want.shape}")
        if not (np.isfinite(got).all() and np.isfinite(want).all()):
            which = "network" if not np.isfinite(want).all() else "exported graph"
            raise AvtkError(f"{name}: the {which} gives NaN or infinite embeddings for an input of shape "
                            f"{tuple(inputs[0].shape)}: no parity can be measured")
        worst = max(worst, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))
        shapes.append(list(inputs[0].shape))
    if not worst <= TOLERANCE * scale:
        raise AvtkError(f"{name}: the exported graph differs from the network by up to {worst:.3g} "
                        f"(largest embedding value {scale:.3g}) on inputs of shapes {shapes}")
    return {"checked": True, "max_abs_diff": worst, "max_abs_embedding": scale, "input_shapes": shapes}
