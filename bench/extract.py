#!/usr/bin/env python3
"""Speed of ECAPA-L (C=1024) embedding extraction on the CPU: avtk against SpeechBrain's ECAPA-TDNN; and, with
--rtf, one real-time-factor row per speaker network against onnxruntime and WeSpeaker's published figures.

    python bench/extract.py [--utts 12] [--repeats 3] [--threads 2] [--max-frames 20000] [--onnx] [--compile]
    python bench/extract.py --quick          # a smoke run (4 short utterances, one repeat)
    python bench/extract.py --rtf [--networks ecapa_tdnn,campplus,resnet34,resnet221,resnet293,eres2netv2] [--utts 4]
                            [--seconds 5] [--repeats 3] [--threads 1]

--rtf: each network at its VoxCeleb size (randomly initialised, eval mode, fp32; ecapa_tdnn is the seed's
ECAPA-L, C=1024, 15.44 M parameters, against WeSpeaker's C=1024 ECAPA of 14.65 M) embeds --utts utterances of
--seconds s (80-dim fbank + CMN computed once, so the rows time the network alone) one at a time, at --threads
torch threads (1: WeSpeaker's setting), as: the eager network; avtk's inference copy (what extraction runs:
avtk.embed.prepare_for_inference, i.e. BN folding for the ResNets and CAM++, the fused ECAPA); and the eager
network exported to ONNX (features in, the unpadded path, opset 17) on onnxruntime with one intra-op thread.
RTF = seconds of compute per second of audio (the median of --repeats back-to-back runs per utterance, the
variants in rotated order, summed). The last column is WeSpeaker's published onnxruntime RTF (its
runtime/onnxruntime/README.md: 1 thread, 5 s chunks, an Intel Xeon Platinum 8160 at 2.1 GHz, its C++ runtime
with its own fbank): a different CPU and program, for context only ("none" for ERes2NetV2: neither WeSpeaker nor
3D-Speaker publishes one). The front end's own RTF (avtk's fbank
on the same audio) is printed below the table. Inference copy and onnxruntime must agree with the eager
network within 1e-4 (exit status 1 otherwise). Needs onnxruntime (`pip install -e '.[bench]'`), not
SpeechBrain.

Both networks are randomly initialised (no weights), fp32, torch.set_num_threads(--threads), eval mode, no
autograd. They embed the same utterances of mixed length (uniform 2-20 s of synthetic audio): 80-dim Kaldi
fbank features are computed once with avtk's front end and mean-normalised, and both networks get those same
features, so the comparison is the network alone.

The peer is `speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN` (`pip install -e '.[bench]'` and
`pip install --no-deps speechbrain==1.1.2`; it imports torchaudio, whose registry wheel does not load beside a
CPU torch, so this script puts a stub `torchaudio` module in sys.modules when the real one is missing; the
network itself never uses it), in two sizes:

  matched  channels [1024]*4 + [1536], attention 256: avtk's ECAPA-L (the seed's), 15.45 M parameters against
           avtk's 15.44 M: the like-for-like comparison and the headline ratio;
  recipe   channels [1024]*4 + [3072], attention 128: SpeechBrain's VoxCeleb recipe, 20.8 M parameters and
           about 1.3x the multiply-adds per frame (a bigger network, not a slower implementation).

Each is run one utterance at a time (its usual use) and batched by length with relative lengths (the same
length-sorted batches as avtk, zero-padded; SpeechBrain's reflect-padded convolutions see the padding, so
its batched embeddings differ from its one-at-a-time ones, printed below).

avtk runs its encoder in the inference form `avtk.embed.embed` uses (prepare_for_inference, i.e.
avtk.models.ecapa.fuse_for_inference; its preparation time is printed apart) and, for the effect of that
change, the eager model as trained, on the same padded batches with lengths. Every network gets the same
calls: one utterance at a time, then avtk's length-sorted batches (avtk.embed._batches, --max-frames padded
frames, the default of `avtk extract-embeddings`). Each call is repeated --repeats times with the networks
back to back in rotated order, and its median is summed over the calls: on a shared machine the networks
then see the same load (whole-pass timings were useless here when other jobs ran: 3-6x spreads). Finally
`avtk.embed.embed` runs end to end (fused and eager, batched and one at a time); batched and one-at-a-time
avtk embeddings must agree within 1e-4 (exit status 1 otherwise), and so must fused and eager.

--onnx adds avtk's eager encoder exported to ONNX and run by onnxruntime; --compile adds torch.compile of the
eager encoder (compilation time printed apart). About 3 minutes on 2 quiet cores with the defaults.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
import types
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avtk.embed import _batches, _pad, batch_frames, embed, prepare_for_inference  # noqa: E402
from avtk.features import cmn  # noqa: E402
from avtk.models.speaker_net import SpeakerNet  # noqa: E402

TOL = 1e-4


def import_speechbrain_ecapa():
    try:
        import torchaudio  # noqa: F401
        stubbed = False
    except Exception:  # not installed, or a CUDA build that does not load beside the CPU torch
        stub = types.ModuleType("torchaudio")
        stub.__version__ = "2.9.0"  # speechbrain's backend check only reads the version
        sys.modules["torchaudio"] = stub
        stubbed = True
    try:
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    except ImportError as err:
        sys.exit(f"cannot import SpeechBrain's ECAPA_TDNN ({err}); "
                 "pip install -e '.[bench]' && pip install --no-deps speechbrain==1.1.2")
    return ECAPA_TDNN, stubbed


def make_features(net, n, seed, low_s, high_s):
    """(key, (frames, 80) float32) items: fbank + CMN of synthetic audio (a few harmonic tones in noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, seconds in enumerate(rng.uniform(low_s, high_s, n)):
        samples = int(seconds * 16000)
        t = np.arange(samples) / 16000.0
        f0 = rng.uniform(90, 250)
        wave = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 8))
        wave = 0.1 * wave * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t)) + 0.01 * rng.standard_normal(samples)
        with torch.inference_mode():
            feats, _ = net.features(torch.from_numpy(wave.astype(np.float32))[None])
            feats = cmn(feats)[0].numpy()
        out.append((f"utt{i:03d}", np.ascontiguousarray(feats, dtype=np.float32)))
    return out


def chunks(items, max_frames):
    """The inputs of one network call: (keys, padded (B, frames, 80) features, lengths), in avtk's batches
    (avtk.embed._batches: sorted by length, at most max_frames padded frames; max_frames=1: one at a time)."""
    out = []
    for batch in _batches(items, max_frames):
        x, lengths = _pad([a for _, a in batch])
        out.append(([k for k, _ in batch], x, lengths))
    return out


def runners(net, fused, peers, session=None, compiled=None):
    """name -> f(x (B, frames, 80), lengths) -> (B, 192) numpy, every network behind one signature."""
    def peer(model):
        # relative lengths, SpeechBrain's convention; one utterance alone is run without them, as usual
        return lambda x, n: model(x, None if len(x) == 1 else n.float() / x.shape[1])[:, 0].numpy()

    run = {f"peer {name}": peer(model) for name, model in peers.items()}
    run["avtk eager"] = lambda x, n: net.encode(x, n).numpy()
    run["avtk fused"] = lambda x, n: fused(x.transpose(1, 2), n).numpy()
    if session is not None:
        run["avtk onnx"] = lambda x, n: session.run(None, {"feats": x.transpose(1, 2).contiguous().numpy(),
                                                          "lengths": n.numpy()})[0]
    if compiled is not None:
        run["avtk compiled"] = lambda x, n: compiled(x.transpose(1, 2).contiguous(), n).numpy()
    return run


def timed(run, work, repeats):
    """({name: seconds}, {name: seconds at best}, {name: {key: embedding}}): every network on every chunk,
    `repeats` times, the order of the networks rotated; per chunk the median (and the minimum), summed over the
    chunks. Running the networks back to back on
    one chunk at a time lets them share whatever the rest of the machine is doing."""
    names = list(run)
    total, least = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    outputs = {n: {} for n in names}
    with torch.inference_mode():
        for keys, x, lengths in work:
            spent = {n: [] for n in names}
            for r in range(repeats):
                for n in names[r % len(names):] + names[:r % len(names)]:
                    start = time.perf_counter()
                    emb = run[n](x, lengths)
                    spent[n].append(time.perf_counter() - start)
                    outputs[n].update(zip(keys, emb))
            for n in names:
                total[n] += statistics.median(spent[n])
                least[n] += min(spent[n])
    return total, least, outputs


def max_diff(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def onnx_session(encoder, threads, tmp, lengths=True):
    """avtk's eager encoder as ONNX (torch's TorchScript exporter; dynamic batch and frames) on onnxruntime;
    lengths=False: the graph of the unpadded path, with the features as its only input."""
    import onnxruntime as ort

    x = torch.randn(2, 80, 300)
    path = os.path.join(tmp, "encoder.onnx")
    inputs, names = ((x, torch.tensor([300, 200])), ["feats", "lengths"]) if lengths else ((x,), ["feats"])
    axes = {"feats": {0: "batch", 2: "frames"}, "lengths": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, inputs, path, input_names=names, output_names=["embedding"],
                          dynamic_axes={k: v for k, v in axes.items() if k in names}, opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--utts", type=int, default=12, help="utterances, lengths uniform in [--min-s, --max-s]")
    p.add_argument("--min-s", type=float, default=2.0)
    p.add_argument("--max-s", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of every configuration (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default 2; --rtf: 1)")
    p.add_argument("--max-frames", type=int, default=20000, help="padded frames per batch, both toolkits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-recipe", action="store_true", help="leave out the recipe-sized (MFA 3072) peer")
    p.add_argument("--onnx", action="store_true", help="also time avtk's encoder on onnxruntime")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of avtk's eager encoder")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 utterances of 2-4 s, one repeat")
    p.add_argument("--rtf", action="store_true", help="one RTF row per network of --networks (see above)")
    p.add_argument("--networks", default=",".join(RTF_NETWORKS), help="--rtf: encoders, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="--rtf: length of each utterance")
    args = p.parse_args()
    if args.threads is None:
        args.threads = 1 if args.rtf else 2
    if args.rtf:
        return rtf_table(args)
    if args.quick:
        args.utts, args.min_s, args.max_s, args.repeats = 4, 2.0, 4.0, 1

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ECAPA_TDNN, stubbed = import_speechbrain_ecapa()
    import speechbrain

    net = SpeakerNet(encoder_args={"in_dim": 80, "channels": 1024, "embed_dim": 192}, cmn=False).eval()
    peers = {"matched": ECAPA_TDNN(80, lin_neurons=192, channels=[1024] * 4 + [1536], attention_channels=256).eval()}
    if not args.no_recipe:
        peers["recipe"] = ECAPA_TDNN(80, lin_neurons=192, channels=[1024] * 4 + [3072], attention_channels=128).eval()
    items = make_features(net, args.utts, args.seed, args.min_s, args.max_s)
    frames = sum(len(a) for _, a in items)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"speechbrain {speechbrain.__version__}{' (torchaudio stubbed)' if stubbed else ''}; load {load:.2f}")
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in peers.items()}
    print(f"{len(items)} utterances, {frames:,} frames ({frames / 100:.0f} s of audio), lengths "
          f"{min(len(a) for _, a in items)}-{max(len(a) for _, a in items)} frames; parameters: avtk "
          f"{sum(p.numel() for p in net.encoder.parameters()):,}, "
          + ", ".join(f"SpeechBrain {k} {v:,}" for k, v in n_params.items()))

    t0 = time.perf_counter()
    fused = prepare_for_inference(net).encoder
    t_prepare = time.perf_counter() - t0
    notes = [f"prepare_for_inference (BN folding, once per embed call) {1000 * t_prepare:.0f} ms, not in the times"]
    tmp = tempfile.TemporaryDirectory()
    session = compiled = None
    if args.onnx:
        try:
            t0 = time.perf_counter()
            session = onnx_session(net.encoder, args.threads, tmp.name)
            notes.append(f"onnxruntime: export + session {time.perf_counter() - t0:.1f} s, not in the times")
        except ImportError as err:
            notes.append(f"onnxruntime not importable ({err}): no ONNX row")
    if args.compile:
        compiled = torch.compile(net.encoder, dynamic=True)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _, a in items[:3]:  # the first calls compile; a few lengths settle the dynamic shapes
                compiled(torch.from_numpy(a.T.copy())[None])
        notes.append(f"torch.compile: compilation (first 3 calls) {time.perf_counter() - t0:.1f} s, not in the times")
    run = runners(net, fused, peers, session, compiled)
    timed(run, chunks(items[:2], 1), 1)  # warm-up: oneDNN primitives, the allocator
    cap = batch_frames(args.max_frames, "cpu")
    passes = {"one": 1, "cap": cap, "big": args.max_frames}
    med, low, out = {}, {}, {}
    for name, frames_per_batch in passes.items():
        med[name], low[name], out[name] = timed(run, chunks(items, frames_per_batch), args.repeats)
    # avtk's extraction itself, as `avtk extract-embeddings` runs it (fused, CPU batches), and eager
    t0 = time.perf_counter()
    embed_batched = dict(embed(net, items, "feats", max_frames=args.max_frames))
    t_embed = time.perf_counter() - t0
    embed_one = dict(embed(net, items, "feats", max_frames=1))
    embed_eager = dict(embed(net, items, "feats", max_frames=args.max_frames, fused=False))
    tmp.cleanup()

    ref = out["one"]["avtk eager"]
    diffs = [  # (what, max |difference|, required within TOL)
        ("embed(): batched vs one at a time", max_diff(embed_batched, embed_one), True),
        ("embed(): batched vs eager one at a time", max_diff(embed_batched, ref), True),
        ("embed(): eager batched vs eager one at a time", max_diff(embed_eager, ref), True),
        (f"fused encoder: batched ({args.max_frames}) vs one at a time",
         max_diff(out["big"]["avtk fused"], out["one"]["avtk fused"]), True),
        ("fused encoder vs eager, one at a time", max_diff(out["one"]["avtk fused"], ref), True),
    ]
    for k in ("avtk onnx", "avtk compiled"):
        if k in run:
            diffs.append((f"{k[5:]} vs eager, one at a time", max_diff(out["one"][k], ref), False))
    for name in peers:
        diffs.append((f"SpeechBrain {name}: batched vs one at a time", max_diff(
            out["cap"][f"peer {name}"], out["one"][f"peer {name}"]), False))
    ok = all(v <= TOL for _, v, required in diffs if required)
    scale = max(float(np.abs(v).max()) for v in ref.values())
    print(f"largest |embedding| {scale:.2f}; max |difference| per utterance:")
    for what, v, required in diffs:
        print(f"  {what:50s} {v:.2e}" + (f" {'ok' if v <= TOL else 'FAIL'} at {TOL:g}" if required else ""))
    print()

    def row(label, a, b):
        """a and b: (pass, network) pairs."""
        return (label, f"{med[a[0]][a[1]]:.2f} s", f"{med[b[0]][b[1]]:.2f} s",
                f"{med[a[0]][a[1]] / med[b[0]][b[1]]:.2f}x", f"{low[a[0]][a[1]] / low[b[0]][b[1]]:.2f}x")

    labels = {"one": "one at a time", "cap": f"batched by length, <= {cap} frames (embed on CPU)",
              "big": f"batched by length, <= {args.max_frames} frames"}
    best = min(passes, key=lambda p: med[p]["avtk fused"])
    rows = []
    for name in peers:
        peer = f"peer {name}"
        rows.append((f"SpeechBrain ({'matched sizes' if name == 'matched' else 'recipe: MFA 3072, att. 128'})",
                     "peer", "avtk", "", ""))
        rows += [row(f"  {labels[p]}", (p, peer), (p, "avtk fused")) for p in passes]
        pbest = min(passes, key=lambda p: med[p][peer])
        rows.append(row(f"  best of each ({labels[pbest].split(',')[0]} / {labels[best].split(',')[0]})",
                        (pbest, peer), (best, "avtk fused")))
    rows += [("avtk before -> after this change", "before", "after", "", ""),
             row(f"  extraction: eager <= {args.max_frames} -> fused <= {cap}", ("big", "avtk eager"),
                 ("cap", "avtk fused")),
             row("  fused alone, one at a time", ("one", "avtk eager"), ("one", "avtk fused")),
             row(f"  fused alone, <= {args.max_frames} frames", ("big", "avtk eager"), ("big", "avtk fused")),
             row(f"  CPU cap alone (fused, {args.max_frames} -> {cap})", ("big", "avtk fused"), ("cap", "avtk fused"))]
    for k in ("avtk onnx", "avtk compiled"):
        if k in run:
            rows.append(row(f"  eager -> {k[5:]}, one at a time", ("one", "avtk eager"), ("one", k)))
    print(f"{'':54s} {'':>9s} {'':>9s} {'ratio':>7s} {'(best)':>7s}")
    for label, a, b, c, d in rows:
        print(f"{label:54s} {a:>9s} {b:>9s} {c:>7s} {d:>7s}")
    print(f"times: per call the median of {args.repeats} back-to-back runs, summed over the calls; (best): the "
          f"ratio of the summed minima. Load {load:.2f} before, {os.getloadavg()[0]:.2f} after. avtk fused "
          f"{frames / med[best]['avtk fused']:.0f} frames/s at best; embed() end to end, one run: {t_embed:.2f} s")
    for line in notes:
        print(line)
    return 0 if ok else 1


# --rtf: the networks at their VoxCeleb sizes (egs/voxceleb/conf), and WeSpeaker's published onnxruntime RTFs
# (runtime/onnxruntime/README.md: 1 thread, 5 s chunks, Xeon Platinum 8160; its ECAPA C=1024 has 14.65 M
# parameters, avtk's 15.44 M; its table's ResNet-221/293 counts, 23.86 / 28.69 M, include a second embedding layer).
RTF_NETWORKS = {
    "ecapa_tdnn": ({"channels": 1024, "embed_dim": 192}, 0.041724),
    "campplus": ({"embed_dim": 512}, 0.022978),
    "resnet34": ({"embed_dim": 256, "base_width": 32}, 0.060735),
    "resnet221": ({"embed_dim": 256, "base_width": 32}, 0.267511),
    "resnet293": ({"embed_dim": 256, "base_width": 32}, 0.364011),
    "eres2netv2": ({"embed_dim": 192, "base_width": 64}, None),  # 3D-Speaker's VoxCeleb size, 17.86 M
}


def rtf_table(args):
    """The --rtf rows: the eager network, avtk's inference copy and onnxruntime, one utterance at a time."""
    import onnxruntime

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in names if n not in RTF_NETWORKS]
    if unknown:
        sys.exit(f"--networks: unknown {', '.join(unknown)} (known: {', '.join(RTF_NETWORKS)})")
    probe = SpeakerNet(encoder_args={"in_dim": 80, "channels": 8, "embed_dim": 8}, cmn=False).eval()
    items = make_features(probe, args.utts, args.seed, args.seconds, args.seconds)
    audio = args.utts * args.seconds
    wave = torch.from_numpy(np.random.default_rng(args.seed).standard_normal(int(args.seconds * 16000))
                            .astype(np.float32) * 0.1)[None]
    with torch.inference_mode():
        probe.features(wave)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            probe.features(wave)
        fbank_rtf = (time.perf_counter() - t0) / args.repeats / args.seconds
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"onnxruntime {onnxruntime.__version__} with {args.threads} intra-op threads; load {os.getloadavg()[0]:.2f}; "
          f"{args.utts} utterances of {args.seconds:g} s, one at a time, median of {args.repeats}")
    head = ("network", "params", "eager", "inference copy", "copy speed-up", "onnxruntime", "ort / copy",
            "WeSpeaker ORT (Xeon 8160)")
    rows, ok = [], True
    for name in names:
        enc_args, published = RTF_NETWORKS[name]
        torch.manual_seed(args.seed)
        net = SpeakerNet(encoder=name, encoder_args={"in_dim": 80, **enc_args}, cmn=False).eval()
        fast = prepare_for_inference(net).encoder
        with tempfile.TemporaryDirectory() as tmp:
            session = onnx_session(net.encoder, args.threads, tmp, lengths=False)
            run = {"eager": lambda x, n: net.encode(x).numpy(),
                   "copy": lambda x, n: fast(x.transpose(1, 2)).numpy(),
                   "onnx": lambda x, n: session.run(None, {"feats": x.transpose(1, 2).contiguous().numpy()})[0]}
            work = chunks(items, 1)
            timed(run, work[:1], 1)  # warm-up
            med, _, out = timed(run, work, args.repeats)
        scale = max(1.0, max(float(np.abs(v).max()) for v in out["eager"].values()))
        for k in ("copy", "onnx"):
            diff = max_diff(out[k], out["eager"])
            if not diff <= TOL * scale:
                print(f"{name}: {k} differs from the eager network by {diff:.2e}: FAIL at {TOL:g}")
                ok = False
        rtf = {k: v / audio for k, v in med.items()}
        params = sum(p.numel() for p in net.encoder.parameters())
        rows.append((name, f"{params / 1e6:.2f} M", f"{rtf['eager']:.4f}", f"{rtf['copy']:.4f}",
                     f"{rtf['eager'] / rtf['copy']:.2f}x", f"{rtf['onnx']:.4f}", f"{rtf['onnx'] / rtf['copy']:.2f}x",
                     "none" if published is None else f"{published:.4f}"))
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"RTF: seconds of compute per second of audio, the network alone (features precomputed). avtk's fbank "
          f"on {args.seconds:g} s: RTF {fbank_rtf:.4f}. Load {os.getloadavg()[0]:.2f} after.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
