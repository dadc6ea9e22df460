"""Compute log-mel filterbank features of a wav.scp into an ark/scp table, like Kaldi's compute-fbank-feats.

Examples:
    avtk compute-fbank --config conf/fbank.yaml --write-num-frames fbank/utt2num_frames.1 \\
        scp:data/train/split4/wav.1.scp ark,scp:fbank/raw_fbank_train.1.ark,fbank/raw_fbank_train.1.scp
    avtk compute-fbank --snip-edges false --segments data/x/segments scp:data/x/wav.scp ark,t:-

The input is a wav.scp (`utt path` or `utt COMMAND ARGS |`), or with --segments the utterances of a
segments file (`utt reco start end`) cut from its recordings. Audio is read as float in [-1, 1] at the
front end's sample rate (another rate is an error unless --resample). The default front end, kaldi_fbank,
equals Kaldi's compute-fbank-feats on the same 16-bit wav files (see avtk.features.fbank); `seed` is the
seed system's front end (avtk.features.seed_frontend). Utterances are computed in batches of similar
length, on the CPU or a GPU, and written as float32 matrices (frames x bins) in input order. An utterance
too short for one frame is skipped: a WARNING with the count, and its id in the --skipped file
(`o.scp` -> `o.skipped`). Outputs are atomic and written as a group: the table, --write-num-frames and the
skip list all appear, or none does.
"""
import argparse
import logging
import os
import time

import numpy as np

from avtk.command import count, device, make_parser, number
from avtk.errors import AvtkError
from avtk.features.fbank import WINDOW_TYPES

log = logging.getLogger(__name__)

# KaldiFbank option -> (command-line names, type, help). Defaults are KaldiFbank's.
_FBANK_OPTIONS = {
    "num_mel_bins": (["--num-mel-bins"], count(1), "number of triangular mel bins (default 80)"),
    "frame_length_ms": (["--frame-length-ms", "--frame-length"], number(0, low_open=True),
                        "frame length in ms (default 25)"),
    "frame_shift_ms": (["--frame-shift-ms", "--frame-shift"], number(0, low_open=True),
                       "frame shift in ms (default 10)"),
    "sample_rate": (["--sample-rate", "--sample-frequency"], count(1),
                    "sample rate in Hz of the features; audio at another rate needs --resample (default 16000)"),
    "preemphasis": (["--preemphasis", "--preemphasis-coefficient"], number(0, 1),
                    "pre-emphasis coefficient (default 0.97)"),
    "remove_dc_offset": (["--remove-dc-offset"], "bool", "subtract each frame's mean (default true)"),
    "dither": (["--dither"], number(0), "dither: add this times standard normal noise to each sample, on the 16-bit "
                                    "scale; random, seeded by --seed (default 0: deterministic)"),
    "window_type": (["--window-type"], str, "povey, hamming, hanning, rectangular or blackman (default povey)"),
    "snip_edges": (["--snip-edges"], "bool", "true: only whole frames inside the signal; false: frames centred "
                                             "on every shift, edges reflected (Kaldi's semantics; default true)"),
    "low_freq": (["--low-freq"], number(0), "low edge of the lowest mel bin in Hz (default 20)"),
    "high_freq": (["--high-freq"], number(), "high edge of the highest mel bin in Hz; <= 0 is an offset from "
                                          "Nyquist (default 0)"),
    "round_to_power_of_two": (["--round-to-power-of-two"], "bool",
                              "zero-pad each frame to a power of two for the FFT (default true)"),
    "use_energy": (["--use-energy"], "bool", "prepend the log energy as coefficient 0 (default false)"),
    "energy_floor": (["--energy-floor"], number(0), "floor on the energy (absolute, not log) with --use-energy "
                                                "(default 0: none)"),
    "use_power": (["--use-power"], "bool", "power spectrum; false: magnitude (default true)"),
}


def _bool(text):
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "t", "y"):
        return True
    if value in ("false", "0", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def get_parser():
    p = make_parser(__doc__.strip().splitlines()[0])
    p.add_argument("rspecifier", help="input wav.scp, e.g. scp:data/train/wav.scp")
    p.add_argument("wspecifier", help="output table, e.g. ark,scp:fbank/raw_fbank_x.1.ark,fbank/raw_fbank_x.1.scp")
    p.add_argument("--frontend", default="kaldi_fbank", choices=["kaldi_fbank", "seed"],
                   help="kaldi_fbank: Kaldi's fbank (the options below); seed: the seed's front end (no options)")
    g = p.add_argument_group("kaldi_fbank options (Kaldi's names are accepted too)")
    for dest, (names, kind, text) in _FBANK_OPTIONS.items():
        if dest == "window_type":
            g.add_argument(*names, dest=dest, choices=WINDOW_TYPES, default=argparse.SUPPRESS, help=text)
        elif kind == "bool":
            g.add_argument(*names, dest=dest, type=_bool, nargs="?", const=True, default=argparse.SUPPRESS,
                           metavar="true|false", help=text)
        else:
            g.add_argument(*names, dest=dest, type=kind, default=argparse.SUPPRESS, help=text)
    p.add_argument("--segments", help="segments file (utt reco start end): compute features of these segments of "
                                      "the recordings in the wav.scp")
    p.add_argument("--resample", action="store_true", help="resample audio at another rate instead of failing")
    p.add_argument("--write-num-frames", metavar="FILE",
                   help="also write `utt frames` lines to FILE (or ark,t:FILE), as Kaldi's utt2num_frames")
    p.add_argument("--skipped", metavar="FILE",
                   help="list the skipped utterances (`utt too_short`) here (default: the output scp, or ark, with "
                        "its extension replaced by .skipped; a stream output lists none unless this is given)")
    p.add_argument("--batch-size", type=count(1), default=16, help="utterances per batch")
    p.add_argument("--device", default="cpu", type=device, help="where to compute: cpu, cuda, cuda:N or auto")
    p.add_argument("--num-threads", type=count(1), default=1,
                   help="torch CPU threads (recipes run several jobs at once, hence 1)")
    p.add_argument("--seed", type=count(0), default=0, help="seed of the random dither")
    return p


# --------------------------------------------------------------------------------------------------
# input


def _wav_scp_path(rspecifier):
    if not isinstance(rspecifier, str) or ":" not in rspecifier:
        raise AvtkError(f"invalid rspecifier {rspecifier!r}: expected scp:data/x/wav.scp")
    types, path = rspecifier.split(":", 1)
    types = [t.strip() for t in types.split(",")]
    if "scp" not in types or "ark" in types or not path.strip():
        raise AvtkError(f"invalid rspecifier {rspecifier!r}: expected scp:data/x/wav.scp (a wav.scp of paths "
                        "or 'COMMAND |' pipes)")
    path = path.strip()
    if not os.path.isfile(path):
        raise AvtkError(f"{rspecifier}: {path} does not exist or is not a file")
    return path


def _windows(items, size):
    window = []
    for item in items:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


# --------------------------------------------------------------------------------------------------
# main


def _frontend_options(args):
    opts = {dest: getattr(args, dest) for dest in _FBANK_OPTIONS if hasattr(args, dest)}
    if args.frontend == "seed" and opts:
        names = ", ".join(_FBANK_OPTIONS[d][0][0] for d in opts)
        raise AvtkError(f"--frontend seed takes no fbank options, but got {names}")
    return opts


def _num_frames_path(spec):
    """The file of --write-num-frames: a plain name, or Kaldi's ark,t:FILE."""
    head, sep, tail = spec.partition(":")
    if sep and head and set(head.split(",")) <= {"ark", "scp", "t", "b", "f", "nf", "p"}:
        if set(head.split(",")) - {"f", "nf", "p"} != {"ark", "t"}:
            raise AvtkError(f"--write-num-frames {spec!r}: expected a file name or ark,t:FILE")
        spec = tail.strip()
    if not spec or spec == "-":
        raise AvtkError(f"--write-num-frames {spec!r}: expected a file name")
    return spec


def main(args):
    import torch

    from avtk.features import build_frontend
    from avtk.io.atomic import atomic_group

    torch.set_num_threads(args.num_threads)
    wav_scp = _wav_scp_path(args.rspecifier)
    if args.segments is not None and not os.path.isfile(args.segments):
        raise AvtkError(f"--segments {args.segments}: no such file")
    num_frames_file = _num_frames_path(args.write_num_frames) if args.write_num_frames else None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise AvtkError(f"--device {args.device}: no CUDA device is available")
    device = torch.device(args.device)
    frontend = build_frontend(args.frontend, **_frontend_options(args)).to(device).eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed)

    from avtk.io.audio import AudioReader

    audio = AudioReader(wav_scp, args.resample, segments=args.segments, sample_rate=frontend.sample_rate, max_cached=4,
                        sort=False)
    from avtk.io.ark import input_files

    # the features, the frame counts and the skip list, or none; none of them over an input
    with atomic_group(args.skipped, num_frames_file, inputs=input_files(args.rspecifier, args.segments)):
        _compute(args, wav_scp, audio, frontend, generator, device, num_frames_file)
    return 0


def _compute(args, wav_scp, audio, frontend, generator, device, num_frames_file):
    """Write the features of `audio` (an AudioReader of `wav_scp`) to args.wspecifier, the --write-num-frames
    file and the list of skipped utterances."""
    import torch

    from avtk.io.ark import open_writer
    from avtk.io.atomic import atomic_open, write_skipped

    sample_rate = frontend.sample_rate
    log.info("computing %s features of %d utterances of %s on %s", args.frontend, len(audio), wav_scp, device)
    start = time.time()
    counts = {}  # utt -> frames, in input order
    skipped, total_samples, total_frames = [], 0, 0
    window_size = args.batch_size * 8  # utterances read ahead and sorted by length into batches
    with open_writer(args.wspecifier) as writer:
        skipped_file = args.skipped or writer.side_path(".skipped")
        for window in _windows(audio, window_size):
            feats_of = {}
            order = sorted(range(len(window)), key=lambda i: len(window[i][1]))
            for b in range(0, len(order), args.batch_size):
                batch = [window[i] for i in order[b:b + args.batch_size]]
                lengths = torch.tensor([len(w) for _, w in batch], dtype=torch.long)
                padded = np.zeros((len(batch), int(lengths.max())), np.float32)
                for i, (_, w) in enumerate(batch):
                    padded[i, :len(w)] = w
                with torch.inference_mode():
                    feats, frames = frontend(torch.from_numpy(padded).to(device), lengths.to(device),
                                             generator=generator)
                feats, frames = feats.cpu().numpy(), frames.cpu().tolist()
                for i, (utt, _) in enumerate(batch):
                    feats_of[utt] = feats[i, :frames[i]]
            for utt, wave in window:
                total_samples += len(wave)
                mat = feats_of[utt]
                if mat.shape[0] == 0:
                    log.warning("utterance %s: %d samples (%.3f s) is too short for one frame; skipped",
                                utt, len(wave), len(wave) / sample_rate)
                    skipped.append((utt, "too_short"))
                    continue
                writer[utt] = np.ascontiguousarray(mat, dtype=np.float32)
                counts[utt] = mat.shape[0]
                total_frames += mat.shape[0]
    if num_frames_file is not None:
        with atomic_open(num_frames_file, "w", encoding="utf-8") as f:
            for utt, n in counts.items():
                f.write(f"{utt} {n}\n")
    elapsed = time.time() - start
    write_skipped(skipped_file, skipped, len(audio), "utterances too short for one frame", log)
    if not counts:
        log.warning("wrote no features: %s has no usable utterances", wav_scp)
    audio_s = total_samples / sample_rate
    log.info("wrote %d utterances (%d frames of %d dims) to %s in %.2f s (%.4f s per second of audio)",
             len(counts), total_frames, frontend.out_dim, args.wspecifier, elapsed,
             elapsed / audio_s if audio_s else 0.0)
