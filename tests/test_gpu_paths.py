"""The GPU paths, checked on the CPU: host syncs counted in training steps and front ends, vectorised SpecAugment
equal to the per-crop reference, parallel extraction equal to the serial one, the face index's memory."""
import collections
import traceback
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

AVTK = str(Path(__file__).resolve().parents[1] / "avtk")
SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")


@pytest.fixture
def host_syncs(monkeypatch):
    """Counter of tensor -> host conversions made by avtk code: {(method, dtype, file:line): calls}."""
    calls = collections.Counter()
    for name in SYNCS:
        def counted(self, *args, _f=getattr(torch.Tensor, name), _n=name, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if caller.filename.startswith(AVTK):
                calls[(_n, str(self.dtype).replace("torch.", ""), f"{Path(caller.filename).name}:{caller.lineno}")] += 1
            return _f(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def feats_dir(d, speakers=4, utts=4, frames=120):
    """A data dir of random 80-dim features (feats.scp, utt2spk, spk2utt, wav.scp, utt2num_frames)."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pairs = [(f"s{s}-u{u}", f"s{s}") for s in range(speakers) for u in range(utts)]
    with kaldiio.WriteHelper(f"ark,scp:{d}/feats.ark,{d}/feats.scp") as w:
        for u, _ in pairs:
            w[u] = rng.standard_normal((frames, 80)).astype(np.float32)
    (d / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in pairs))
    (d / "spk2utt").write_text("".join(f"s{s} " + " ".join(f"s{s}-u{u}" for u in range(utts)) + "\n"
                                       for s in range(speakers)))
    (d / "wav.scp").write_text("".join(f"{u} {d}/{u}.wav\n" for u, _ in pairs))
    (d / "utt2num_frames").write_text("".join(f"{u} {frames}\n" for u, _ in pairs))
    return d


def test_training_steps_sync_with_the_host_once_per_log_interval(tmp_path, host_syncs):
    """Loss, accuracy and finiteness stay on the device between log lines: one host copy per interval (the
    loader's int64 labels and indices are host data; nothing computed by the network is read per step)."""
    from avtk.train.config import load_config
    from avtk.train.trainer import Trainer

    cfg = load_config(None, ["model.encoder_args={in_dim: 80, channels: 16, embed_dim: 8}", "data.batch_size=2",
                             "data.crop_seconds=1.0", "runtime.log_interval=3", "runtime.epochs=1",
                             "runtime.threads=1"])
    trainer = Trainer(cfg, feats_dir(tmp_path / "data"), tmp_path / "exp")
    host_syncs.clear()
    trainer._epoch(1)
    steps = len(trainer.batches)
    computed = {k: n for k, n in host_syncs.items() if k[1] not in ("int64",)}
    assert steps == 8 and sum(computed.values()) == 3, computed  # log lines after steps 3, 6 and 8


@pytest.mark.parametrize("frontend", ["kaldi_fbank", "seed"])
def test_front_ends_size_their_output_on_the_host(frontend, host_syncs):
    """The training path (lengths None) reads nothing back from the device to size the features."""
    from avtk.features import build_frontend

    fe = build_frontend(frontend)
    wave = torch.randn(3, 8000) * 0.1
    host_syncs.clear()  # (building the mel banks reads floats; that is start-up, not a step)
    feats, counts = fe(wave)
    assert feats.shape[:2] == (3, fe.num_frames(8000)) and counts.tolist() == [fe.num_frames(8000)] * 3
    # KaldiFbank's CPU-only branch walks each utterance's frames (counts.tolist() of a CPU tensor); no other
    calls = {k: n for k, n in host_syncs.items() if k[2].startswith(("fbank.py", "seed_frontend.py"))}
    if frontend == "kaldi_fbank":
        assert [(k[:2], n) for k, n in calls.items()] == [(("tolist", "int64"), 1)], calls
    else:
        assert calls == {}, calls


def test_spec_augment_batch_equals_the_per_crop_reference():
    from avtk.augment import spec_augment, spec_augment_batch

    feats = torch.randn(6, 200, 80)
    for seed in range(5):
        rngs = [np.random.default_rng([seed, 1, i, 1]) for i in range(6)]
        want = torch.stack([spec_augment(f, np.random.default_rng([seed, 1, i, 1])) for i, f in enumerate(feats)])
        got = spec_augment_batch(feats, rngs)
        assert torch.equal(got, want)
    short = torch.randn(2, 5, 3)  # no time mask fits (int(0.1 * 5) = 0), the frequency mask is capped by 3 bins
    assert torch.equal(spec_augment_batch(short, [np.random.default_rng(i) for i in range(2)]),
                       torch.stack([spec_augment(f, np.random.default_rng(i)) for i, f in enumerate(short)]))


def test_a_non_finite_loss_stops_at_its_log_interval_with_the_state_before_it(tmp_path):
    """A NaN loss at step 5 (log interval 3) stops training after step 6, naming steps 4-6; last_good.pt holds
    the weights before step 4, the last state known to come from finite losses only."""
    from avtk.errors import AvtkError
    from avtk.train.config import load_config
    from avtk.train.trainer import Trainer

    cfg = load_config(None, ["model.encoder_args={in_dim: 80, channels: 16, embed_dim: 8}", "data.batch_size=2",
                             "data.crop_seconds=1.0", "runtime.log_interval=3", "runtime.threads=1"])
    trainer = Trainer(cfg, feats_dir(tmp_path / "data"), tmp_path / "exp")
    module, seen = trainer.ddp, {}

    def forward(feats, labels):
        seen["step"] = seen.get("step", 0) + 1
        if seen["step"] == 4:
            seen["before"] = {k: v.clone() for k, v in trainer.net.state_dict().items()}
        loss, acc = module(feats, labels)
        return (loss * float("nan") if seen["step"] == 5 else loss), acc

    trainer.ddp = forward
    with pytest.raises(AvtkError) as err:
        trainer._epoch(1)
    assert seen["step"] == 6 and str(err.value).startswith(
        "loss is not finite at epoch 1 in steps 4-6 (2 steps of 1 rank; lr ")  # step 6 inherits NaN weights
    saved = torch.load(tmp_path / "exp/checkpoints/last_good.pt", weights_only=False)
    assert saved["epoch"] == 0 and saved["model"].keys() == seen["before"].keys()
    assert all(torch.equal(saved["model"][k], v) for k, v in seen["before"].items())
    assert not all(torch.equal(trainer.net.state_dict()[k], v) for k, v in seen["before"].items())
