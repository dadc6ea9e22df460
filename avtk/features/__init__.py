"""Acoustic front ends on torch, shared by extraction, training and export.

Every front end is an nn.Module called as `frontend(wave (B, T) float in [-1, 1], lengths (B,) or None)`
and returning `(feats (B, F_max, dim) float32, num_frames (B,) long)`, with zeros past each utterance's
frames; it has `out_dim`, `sample_rate`, `frame_shift` (samples) and `num_frames(num_samples)`.

    kaldi_fbank  KaldiFbank: Kaldi's compute-fbank-feats (80 log-mel bins, 25/10 ms, Povey window)
    seed         SeedFrontend: the seed's ECAPA front end (log power mel, mean-normalised per utterance)
"""
from __future__ import annotations

import inspect

import torch

from avtk.errors import AvtkError
from avtk.features.fbank import KaldiFbank, num_frames, positions
from avtk.features.seed_frontend import SeedFrontend

FRONTENDS = {"kaldi_fbank": KaldiFbank, "seed": SeedFrontend}

__all__ = ["FRONTENDS", "KaldiFbank", "SeedFrontend", "build_frontend", "cmn", "frontend_options", "num_frames"]


def frontend_options(name):
    """{option: default} accepted by front end `name`."""
    if name not in FRONTENDS:
        raise AvtkError(f"unknown front end {name!r} (one of {', '.join(sorted(FRONTENDS))})")
    params = inspect.signature(FRONTENDS[name].__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def build_frontend(name, **opts):
    """The front end `name` of FRONTENDS built with `opts`; an unknown name or option is an AvtkError."""
    allowed = frontend_options(name)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        valid = ", ".join(sorted(allowed)) if allowed else "none"
        raise AvtkError(f"front end {name!r}: unknown option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(unknown)} (valid options: {valid})")
    try:
        return FRONTENDS[name](**opts)
    except (TypeError, ValueError) as err:
        raise AvtkError(f"front end {name!r}: invalid options {opts}: {err}") from None


def cmn(feats, num_frames=None):
    """Per-utterance mean subtraction over valid frames: (B, F, D) features -> same shape.

    num_frames (B,): valid frames per utterance (None: all F). Padded frames stay zero; an utterance with
    no frames stays all zero.
    """
    if feats.dim() != 3:
        raise AvtkError(f"cmn expects (batch, frames, dim) features, got shape {tuple(feats.shape)}")
    if num_frames is None:
        return feats - feats.mean(dim=1, keepdim=True)
    counts = num_frames if torch.is_tensor(num_frames) and num_frames.device == feats.device else \
        torch.as_tensor(num_frames, device=feats.device)
    counts = counts.long()
    valid = (positions(feats[..., 0]) < counts[:, None]).unsqueeze(-1)  # records no device when traced
    masked = feats.masked_fill(~valid, 0.0)
    mean = masked.sum(dim=1, keepdim=True) / counts.clamp_min(1).view(-1, 1, 1).to(feats.dtype)
    return (masked - mean).masked_fill(~valid, 0.0)
