#!/usr/bin/env python3
"""Face embedding extraction on CPU: avtk's inference path against the plain eager iresnet.

    python bench/face_extract.py [--depths 18 50] [--threads 1 2] [--batch 32] [--repeat 5] [--seed 0]
                                 [--ablation] [--quick]

Builds FaceNet(iresnet18) and FaceNet(iresnet50) (width 64, 112x112, 512-dim embeddings) with BatchNorm
statistics that are not the identity: random affine parameters and PReLU slopes, then running statistics
accumulated over a batch of random images in train mode (so embeddings have the norm of trained ones, about
25). For a batch of N random RGB uint8 images it times

  (a) the baseline: the same encoder, model.eval(), torch.no_grad(), one forward of the N normalised images
      (float32, NCHW), no other change;
  (b) avtk: what avtk.embed.embed_faces does with a batch (net(images), then L2 normalisation) with
      the network avtk.embed.prepare_for_inference(net) gives (avtk.models.iresnet.fuse_for_inference:
      BatchNorms folded, channels-last, slices of 8 images on the CPU), under torch.inference_mode; the pixel normalisation is inside (b) only;

with torch.set_num_threads(1) and (2). Frames/s are from the median of --repeat runs after one warm-up run, (a)
and (b) alternating (the machine may be shared: the load average is printed before and after). The raw
embeddings of (b) must equal those of (a) within 1e-4 (checked). --ablation adds r18 rows for each change
alone and torch.jit.optimize_for_inference. Runs in about 3 minutes with the defaults on 2 cores (--quick:
r18, batch 8, 2 repeats, about 20 s).
"""
import argparse
import copy
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avtk.embed import prepare_for_inference  # noqa: E402
from avtk.models.face_net import FaceNet  # noqa: E402
from avtk.models.iresnet import fuse_for_inference  # noqa: E402
from timing import round_robin  # noqa: E402  (bench/timing.py)

TOL = 1e-4


def make_net(depth, seed):
    """FaceNet(iresnet<depth>) with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = FaceNet(f"iresnet{depth}")
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.momentum = None  # cumulative average: the statistics of the calibration batch
            if m is not net.encoder.features:  # insightface fixes that weight at 1
                m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
        elif isinstance(m, nn.PReLU):
            m.weight.data = torch.rand(m.weight.shape, generator=g) * 0.3
    net.train()
    with torch.no_grad():
        net(torch.randint(0, 256, (16, 112, 112, 3), dtype=torch.uint8, generator=g))
    return net.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[18, 50], help="iresnet depths")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts")
    p.add_argument("--batch", type=int, default=32, help="frames per forward")
    p.add_argument("--repeat", type=int, default=5, help="timed runs (the median is reported)")
    p.add_argument("--seed", type=int, default=0, help="random seed of weights and images")
    p.add_argument("--ablation", action="store_true", help="also time each change alone (r18)")
    p.add_argument("--quick", action="store_true", help="smoke run: r18, batch 8, 2 repeats")
    args = p.parse_args()
    if args.quick:
        args.depths, args.batch, args.repeat = [18], 8, 2

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load0 = os.getloadavg()
    start = time.perf_counter()
    print(f"machine: {os.cpu_count()} cores ({usable} usable), load average {load0[0]:.2f} {load0[1]:.2f} "
          f"{load0[2]:.2f}; torch {torch.__version__}, oneDNN {torch.backends.mkldnn.is_available()}")
    images = torch.randint(0, 256, (args.batch, 112, 112, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(args.seed + 1))
    rows, ok, norms = [], True, []
    for depth in args.depths:
        torch.set_num_threads(max(args.threads))
        net = make_net(depth, args.seed)
        fast = prepare_for_inference(net)
        x = net.normalize(images)  # the baseline's input: float32 NCHW, in [-1, 1]
        with torch.no_grad():
            ref = net.encoder(x)
        with torch.inference_mode():
            got = fast(images)
        diff = float((got - ref).abs().max())
        ok &= diff <= TOL
        norms.append(float(ref.norm(dim=1).mean()))

        def eager():
            with torch.no_grad():
                return net.encoder(x)

        def avtk():
            with torch.inference_mode():
                return F.normalize(fast(images).float(), dim=1)

        variants = [("avtk: prepare_for_inference", avtk, diff)]
        if args.ablation and depth == 18:
            cl_net = copy.deepcopy(net.encoder).to(memory_format=torch.channels_last)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's note on the input-size check
                traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net.encoder, x[:2])))
            ablation = [
                ("  channels-last only", cl_net, x_cl),
                ("  BN folded only (NCHW, whole batch)", fuse_for_inference(net.encoder, False, 0), x),
                ("  BN folded + channels-last, whole batch", fuse_for_inference(net.encoder, True, 0), x),
                ("  jit freeze + optimize_for_inference", traced, x),
            ]
            for name, module, inp in ablation:
                with torch.inference_mode():
                    d = float((module(inp) - ref).abs().max())
                variants.append((name, lambda m=module, i=inp: _inference_call(m, i), d))
        for threads in args.threads:
            torch.set_num_threads(threads)
            times = round_robin([eager] + [v[1] for v in variants], args.repeat, warm_up=True)
            for (name, _, d), t in zip(variants, times[1:]):
                rows.append((f"r{depth}", threads, name, args.batch / times[0], args.batch / t, d))
    load1 = os.getloadavg()
    print(f"batch {args.batch} frames of 112x112, 512-dim embeddings (mean norm {', '.join(f'{n:.1f}' for n in norms)}"
          f"); median of {args.repeat} runs")
    print()
    print(f"{'model':5s} {'threads':>7s}  {'':42s} {'eager f/s':>9s} {'avtk f/s':>9s} {'ratio':>6s} "
          f"{'max |diff|':>10s}")
    for model, threads, name, f_eager, f_avtk, d in rows:
        print(f"{model:5s} {threads:7d}  {name:42s} {f_eager:9.1f} {f_avtk:9.1f} {f_avtk / f_eager:5.2f}x {d:10.1e}")
    print(f"max |diff|: raw embeddings against the eager model ({'ok' if ok else 'FAIL'} at {TOL:g}). "
          f"Load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; whole run "
          f"{time.perf_counter() - start:.0f} s.")
    return 0 if ok else 1


def _inference_call(module, x):
    with torch.inference_mode():
        return module(x)


if __name__ == "__main__":
    sys.exit(main())
