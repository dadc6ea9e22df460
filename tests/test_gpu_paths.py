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


def frames_dir(d, utts, frames, image=None):
    """A data dir whose frames.scp points at `utts` directories of `frames` jpgs each (empty files if no image)."""
    d.mkdir(parents=True)
    lines = []
    for i in range(utts):
        u, f = f"s{i % 2}-u{i:05d}", d / "frames" / f"u{i:05d}"
        f.mkdir(parents=True)
        for n in range(frames):
            (f / f"{3 * n + i % 3:04d}.jpg").write_bytes(image or b"")
        lines.append((u, f"s{i % 2}", f))
    lines.sort()
    (d / "frames.scp").write_text("".join(f"{u} {f}\n" for u, _, f in lines))
    (d / "wav.scp").write_text("".join(f"{u} {f}.wav\n" for u, _, f in lines))
    (d / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s, _ in lines))
    (d / "spk2utt").write_text("".join(f"s{s} " + " ".join(u for u, k, _ in lines if k == f"s{s}") + "\n"
                                       for s in range(2)))
    return d


FACE_CFG = {"augment": {"face_flip": 0.5, "face_blur": 0.3, "face_grey": 0.3}}


def test_face_dataset_items_are_those_of_the_path_lists(tmp_path):
    """The compact index picks and reads the same frame, augmented the same, as a list of sorted Paths did."""
    import io

    from PIL import Image

    from avtk.face.frames import augment_face, frame_paths, read_frame
    from avtk.train.data import FrameDataset

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buf, "JPEG")
    d = frames_dir(tmp_path / "data", 6, 5, buf.getvalue())
    (d / "frames/u00002/0007.jpg").write_bytes(Image.new("RGB", (112, 112), (9, 99, 199)).tobytes()[:600])
    ds = FrameDataset(d, FACE_CFG, 7, 112)
    dirs = dict(line.split() for line in (d / "frames.scp").read_text().splitlines())
    for index in range(len(ds)):
        paths = frame_paths(ds.utts[index], dirs[ds.utts[index]])
        for epoch in (1, 2, 3):
            rng = np.random.default_rng([7, epoch, index])
            got = ds[(index, epoch)]
            try:
                want = augment_face(read_frame(ds.utts[index], paths[int(rng.integers(len(paths)))], 112), rng,
                                    flip=0.5, blur=0.3, grey=0.3)
            except Exception as err:  # the truncated jpg: the same one-line message
                assert got.message == str(err)
                continue
            assert torch.equal(got[0], torch.from_numpy(want)) and got[1:] == (int(ds.labels[index]), index)


def test_face_dataset_index_bytes_per_utterance(tmp_path):
    """Memory of the index grows with the names' characters, not a Path object per frame."""
    import tracemalloc

    from avtk.train.data import FrameDataset

    d = frames_dir(tmp_path / "data", 300, 20)
    tracemalloc.start()
    ds = FrameDataset(d, FACE_CFG, 0, 112)
    base = tracemalloc.take_snapshot()
    del ds
    freed = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in base.compare_to(freed, "filename")) / 300
    print(f"index: {held:.0f} bytes per utterance")
    assert held < 600, f"{held:.0f} bytes per utterance of 20 frames"  # ~8 chars x 20 names + the lists' slots
