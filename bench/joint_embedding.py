#!/usr/bin/env python3
"""Design choices of the joint audio-visual embedding, on the embeddings of a finished egs/mini run.

    cd egs/mini && ./run.sh                                 # stages 0-12
    python bench/joint_embedding.py egs/mini [--seeds 3]    # about 30 s on one core

Trains fusion networks over the frozen speaker (exp/ecapa_lm, else exp/ecapa) and face (exp/iresnet)
embeddings of the training set, 60 epochs of Adam (lr 2e-3, weight decay 1e-4, batch 64), AAM-softmax (margin 0.2,
scale 30), modality dropout 0.3 on faces, as conf/av_joint_mini.yaml does, and scores the test trials by cosine:
  gated        avtk's gated_fusion (avtk/models/joint.py): e = [sqrt(w_a) a ; sqrt(w_f) f];
  projected    a learnt linear projection of each modality to 128 dims, the same gate over the two, one more
               linear layer (the usual attention-fusion head), for comparison;
each trained on the whole-utterance embeddings and on the 8 random 2 s crops per utterance that stage 12
extracted (exp/av_joint/data/train/audio_emb.scp, whole row first). Test conditions: all faces, and the face
embeddings of --faceless % of the test utterances removed (drawn with numpy, --seed). Printed beside the seed's
mean fusion (a+v)/2 of mean-subtracted cosines, with the audio score alone where a face is missing, and an
untrained gated network (equal weights: the mean fusion, the audio branch without a face).
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from avtk.data.table import read_dict  # noqa: E402
from avtk.data.trials import read_trials  # noqa: E402
from avtk.io.ark import load_table  # noqa: E402
from avtk.metrics import eer  # noqa: E402
from avtk.models.joint import GatedFusion, pack  # noqa: E402
from avtk.models.losses import AamSoftmax  # noqa: E402


class Projected(nn.Module):
    """Per-modality linear projections to `dim`, a gate over the two, a linear output layer."""

    def __init__(self, audio_dim, face_dim, audio_mean, face_mean, dim=128):
        super().__init__()
        self.audio_dim = audio_dim
        self.register_buffer("ma", torch.as_tensor(audio_mean))
        self.register_buffer("mf", torch.as_tensor(face_mean))
        self.pa, self.pf = nn.Linear(audio_dim, dim), nn.Linear(face_dim, dim)
        self.gate, self.out = nn.Linear(2 * dim, 2), nn.Linear(dim, dim)
        self.embed_dim = dim

    def forward(self, x):
        a, f, has_face = x[:, :self.audio_dim], x[:, self.audio_dim:-1], x[:, -1] > 0.5
        if self.training:
            has_face = has_face & (torch.rand(len(x)) >= 0.3)
        a = self.pa(F.normalize(a - self.ma, dim=1))
        f = self.pf(F.normalize(f - self.mf, dim=1)) * has_face[:, None]
        logits = self.gate(torch.cat([a, f], 1))
        logits = logits.masked_fill(torch.stack([torch.zeros_like(has_face), ~has_face], 1), -1e4)
        w = logits.softmax(1)
        return self.out(w[:, :1] * a + w[:, 1:] * f)


def table(path):
    return load_table(f"scp:{path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="an egs/mini directory after ./run.sh")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--faceless", type=float, default=30.0, help="percent of test utterances without a face")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    r = args.recipe
    spk = "ecapa_lm" if os.path.isdir(f"{r}/exp/ecapa_lm/emb") else "ecapa"
    a_train, f_train = table(f"{r}/exp/{spk}/emb/train.scp"), table(f"{r}/exp/iresnet/emb/train.scp")
    a_test, f_test = table(f"{r}/exp/{spk}/emb/test.scp"), table(f"{r}/exp/iresnet/emb/test.scp")
    crops = table(f"{r}/exp/av_joint/data/train/audio_emb.scp")
    utt2spk = read_dict(f"{r}/data/train/utt2spk")
    utts = sorted(utt2spk)
    speakers = sorted(set(utt2spk.values()))
    labels = torch.tensor([speakers.index(utt2spk[u]) for u in utts])
    whole = torch.tensor(np.stack([a_train[u] for u in utts]))
    crop_rows = torch.tensor(np.stack([np.asarray(crops[u])[1:] for u in utts]))
    faces = torch.tensor(np.stack([f_train[u] for u in utts]))
    ma, mf = whole.mean(0), faces.mean(0)
    da, df = whole.shape[1], faces.shape[1]
    trials = read_trials(f"{r}/data/test/trials")
    test_utts = sorted(a_test)
    gone = set(np.random.default_rng(args.seed).choice(test_utts, int(len(test_utts) * args.faceless / 100),
                                                       replace=False))

    def embed(net, drop):
        rows = pack(np.stack([a_test[u] for u in test_utts]), [None if u in drop else f_test[u] for u in test_utts],
                    df)
        with torch.no_grad():
            e = F.normalize(net.eval()(torch.from_numpy(rows)), dim=1).numpy()
        return dict(zip(test_utts, e))

    def eer_of(scores):
        return 100 * eer(np.asarray(scores), trials.labels)[0]

    def cosines(e):
        return [float(e[a] @ e[b]) for a, b in zip(trials.enroll, trials.test)]

    def train(kind, use_crops, seed):
        torch.manual_seed(seed)
        if kind == "gated":
            net = GatedFusion(da, df, hidden=64, face_dropout=0.3)
            net.audio_mean.copy_(ma)
            net.face_mean.copy_(mf)
        else:
            net = Projected(da, df, ma, mf)
        head = AamSoftmax(net.embed_dim, len(speakers), margin=0.2, scale=30.0)
        opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=2e-3, weight_decay=1e-4)
        for _ in range(60):
            net.train()
            perm = torch.randperm(len(utts))
            for i in range(0, len(utts) - 63, 64):
                b = perm[i:i + 64]
                a = crop_rows[b, torch.randint(0, crop_rows.shape[1], (len(b),))] if use_crops else whole[b]
                x = torch.cat([a, faces[b], torch.ones(len(b), 1)], 1)
                loss, _ = head(net(x), labels[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return net

    def unit(x, m):
        return (x - m) / np.linalg.norm(x - m)

    ea = {u: unit(a_test[u], ma.numpy()) for u in test_utts}
    ef = {u: unit(f_test[u], mf.numpy()) for u in test_utts}
    sa = np.array([ea[a] @ ea[b] for a, b in zip(trials.enroll, trials.test)])
    sf = np.array([ef[a] @ ef[b] for a, b in zip(trials.enroll, trials.test)])
    missing = np.array([a in gone or b in gone for a, b in zip(trials.enroll, trials.test)])
    print(f"{r}: {len(utts)} training utterances of {len(speakers)} speakers, speaker network {spk}; "
          f"{len(trials.labels)} test trials, {len(gone)} test utterances without a face "
          f"({missing.mean() * 100:.1f} % of trials lack a face on a side)")
    print(f"{'system':42s} {'EER % all faces':>16s} {'faceless':>10s}")
    print(f"{'audio alone':42s} {eer_of(sa):16.3f} {eer_of(sa):10.3f}")
    print(f"{'seed mean fusion (audio alone if no face)':42s} {eer_of((sa + sf) / 2):16.3f} "
          f"{eer_of(np.where(missing, sa, (sa + sf) / 2)):10.3f}")
    untrained = GatedFusion(da, df, hidden=64)
    untrained.audio_mean.copy_(ma)
    untrained.face_mean.copy_(mf)
    print(f"{'gated, untrained (equal weights)':42s} {eer_of(cosines(embed(untrained, set()))):16.3f} "
          f"{eer_of(cosines(embed(untrained, gone))):10.3f}")
    for kind in ("projected", "gated"):
        for use_crops in (False, True):
            full, part = [], []
            for seed in range(args.seeds):
                net = train(kind, use_crops, seed)
                full.append(eer_of(cosines(embed(net, set()))))
                part.append(eer_of(cosines(embed(net, gone))))
            name = f"{kind}, trained on {'crops' if use_crops else 'whole utterances'}"
            print(f"{name:42s} {' / '.join(f'{x:.2f}' for x in full):>16s} {' / '.join(f'{x:.2f}' for x in part):>10s}",
                  flush=True)


if __name__ == "__main__":
    main()
