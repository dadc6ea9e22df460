"""Issue 13 §2.6: extract-embeddings reads ahead of the network (--num-workers: DataLoader workers for audio, one
thread for feature tables). Same bytes, same order, same skips and the same one ERROR line as reading in turn."""
import re
import shutil

import kaldiio
import numpy as np
import pytest
import soundfile as sf

from avtk.embed import AudioGroups, read_ahead, read_audio
from avtk.errors import AvtkError
from avtk.io.audio import AudioReader, write_wav
from conftest import REPO, SMALL_SPEAKER, UTILS, avtk, run, write_model

SR = 16000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A speaker model, 9 wavs (u04 is 200 samples: no frames, skipped) listed as files and as pipes, three
    recordings cut by a segments file (one recording's segments not together), and a feature table with an
    empty matrix."""
    root = tmp_path_factory.mktemp("workers")
    rng = np.random.default_rng(0)
    files, pipes = [], []
    for i in range(9):
        path = root / f"u{i:02d}.wav"
        samples = 200 if i == 4 else int(rng.uniform(0.5, 2.0) * SR)
        write_wav(path, rng.uniform(-0.3, 0.3, samples).astype(np.float32))
        files.append(f"u{i:02d} {path}\n")
        pipes.append(f"u{i:02d} cat {path} |\n")
    (root / "wav.scp").write_text("".join(files))
    (root / "pipe.scp").write_text("".join(pipes))
    (root / "reco.scp").write_text("".join(f"r{i} {root}/u0{i}.wav\n" for i in (1, 2, 3)))
    (root / "reco.segments").write_text("s1 r1 0 0.3\ns2 r1 0.2 0.45\ns3 r2 0 -1\ns4 r1 0.1 0.4\ns5 r3 0.05 0.35\n"
                                   "s6 r3 0.3 0.5\n")
    with kaldiio.WriteHelper(f"ark,scp:{root}/feats.ark,{root}/feats.scp") as w:
        for i in range(7):
            w[f"f{i}"] = rng.normal(size=(0 if i == 3 else int(rng.integers(50, 200)), 80)).astype(np.float32)
    write_model(root / "m.pt", SMALL_SPEAKER)
    return root


def extract(data, out, rspecifier, workers, *extra, check=True):
    return avtk("extract-embeddings", "--model", data / "m.pt", "--num-workers", workers, *extra, rspecifier,
                f"ark,scp:{out}.ark,{out}.scp", check=check)


def skip_lines(stderr):
    return [re.sub(r"^\S+ \S+ ", "", x) for x in stderr.splitlines() if " WARNING " in x]


@pytest.mark.parametrize("table,extra,n,skipped", [
    ("wav.scp", (), 9, 1), ("pipe.scp", (), 9, 1), ("reco.scp", ("--segments", "reco.segments"), 6, 0),
    ("feats.scp", (), 7, 1), ("ark:cat {data}/feats.ark |", (), 7, 1)])
def test_workers_write_the_bytes_of_serial_extraction(data, tmp_path, table, extra, n, skipped):
    extra = [data / x if x.endswith(".segments") else x for x in extra]
    rspecifier = table.format(data=data) if table.startswith("ark:") else f"scp:{data / table}"
    serial = extract(data, tmp_path / "w0", rspecifier, 0, *extra)
    ahead = extract(data, tmp_path / "w2", rspecifier, 2, *extra)
    assert (tmp_path / "w0.ark").read_bytes() == (tmp_path / "w2.ark").read_bytes()
    scp0 = (tmp_path / "w0.scp").read_text()
    assert scp0.replace("w0.ark", "w2.ark") == (tmp_path / "w2.scp").read_text()
    assert len(scp0.splitlines()) == n - skipped
    assert skip_lines(serial.stderr) == [line.replace("w2.skipped", "w0.skipped") for line in skip_lines(ahead.stderr)]
    if skipped:
        assert (tmp_path / "w0.skipped").read_text() == (tmp_path / "w2.skipped").read_text()
    assert len(skip_lines(serial.stderr)) == (1 if skipped else 0)
    if skipped:
        assert f"skipped {skipped} of {n} utterances that give no frames" in skip_lines(serial.stderr)[0]


def _truncated(path):
    write_wav(path, np.full(SR, 0.1, np.float32))
    path.write_bytes(path.read_bytes()[:44 + 2 * 8000])  # the header still declares 16000 samples
    return "audio file {p} is truncated: its header declares 1.000 s (16000 samples) but the file holds 0.500 s " \
           "(8000 samples)"


def _nan(path):
    x = np.full(SR, 0.1, np.float32)
    x[1234] = np.nan
    sf.write(path, x, SR, subtype="FLOAT")
    return "audio file {p} has a NaN or infinite sample at sample 1234 (0.077 s)"


@pytest.mark.parametrize("make", [_truncated, _nan])
def test_a_bad_utterance_in_a_worker_is_the_serial_error_line(data, tmp_path, make):
    bad = tmp_path / "bad.wav"
    message = make(bad).format(p=bad)
    lines = (data / "wav.scp").read_text().splitlines(keepends=True)
    (tmp_path / "wav.scp").write_text("".join(lines[:6] + [f"u05bad {bad}\n"] + lines[6:]))
    errors = []
    for workers in (0, 2):
        proc = extract(data, tmp_path / f"o{workers}", f"scp:{tmp_path}/wav.scp", workers, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        errors.append([re.sub(r"^\S+ \S+ ", "", x) for x in proc.stderr.splitlines() if " ERROR " in x])
        assert not list(tmp_path.glob(f"o{workers}*")), list(tmp_path.iterdir())
    assert errors[0] == errors[1] == [f"ERROR [avtk extract-embeddings] utterance u05bad: {message}"]


def test_a_bad_feature_matrix_read_ahead_is_the_serial_error_line(data, tmp_path):
    feats = kaldiio.load_scp(str(data / "feats.scp"))
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/f.ark,{tmp_path}/f.scp") as w:
        for k in sorted(feats):
            w[k] = feats[k]
            if k == "f4":
                x = np.ones((30, 80), np.float32)
                x[7, 3] = np.inf
                w["f4nan"] = x
    for workers in (0, 2):
        proc = extract(data, tmp_path / f"o{workers}", f"scp:{tmp_path}/f.scp", workers, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert [x for x in proc.stderr.splitlines() if " ERROR " in x][0].endswith(
            f"ERROR [avtk extract-embeddings] scp:{tmp_path}/f.scp: key 'f4nan' ({tmp_path}/f.scp:6): NaN or "
            "infinite value at row 7 (of 30), column 3"), proc.stderr
        assert len([x for x in proc.stderr.splitlines() if " ERROR " in x]) == 1
        assert not list(tmp_path.glob(f"o{workers}*"))


def test_num_workers_is_range_checked(data, tmp_path):
    proc = extract(data, tmp_path / "o", f"scp:{data}/wav.scp", -1, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "ERROR [avtk extract-embeddings] argument --num-workers: -1 is out of range (must be >= 0)" in proc.stderr


def test_audio_groups_read_a_recording_once_in_order(data):
    reader = AudioReader(data / "reco.scp", segments=data / "reco.segments", sort=False)
    assert AudioGroups(reader).groups == [["s1", "s2"], ["s3"], ["s4"], ["s5", "s6"]]
    serial = list(reader)
    ahead = list(read_audio(reader, 2))
    assert [k for k, _ in ahead] == [k for k, _ in serial] == ["s1", "s2", "s3", "s4", "s5", "s6"]
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for (_, a), (_, b) in zip(serial, ahead))


def test_read_ahead_keeps_order_raises_in_turn_and_closes_the_reader():
    closed = []

    def reader(fail_at=None):
        try:
            for i in range(50):
                if i == fail_at:
                    raise AvtkError(f"item {i} is bad")
                yield i
        finally:
            closed.append(True)

    assert list(read_ahead(reader(), depth=3)) == list(range(50))
    got = []
    with pytest.raises(AvtkError, match="^item 20 is bad$"):
        for i in read_ahead(reader(fail_at=20), depth=3):
            got.append(i)
    assert got == list(range(20))
    early = read_ahead(reader(), depth=3)
    assert [next(early) for _ in range(5)] == [0, 1, 2, 3, 4]
    early.close()
    assert closed == [True, True, True]


@pytest.mark.parametrize("device, workers", [("cuda", 4), ("cuda:1", 4), ("cpu", 0)])
def test_recipe_stage_5_reads_ahead_on_a_gpu(tmp_path, device, workers):
    recipe, stubs = tmp_path / "recipe", tmp_path / "stubs"
    shutil.copytree(REPO / "egs/voxceleb", recipe, symlinks=True,
                    ignore=shutil.ignore_patterns("data", "exp", "fbank", "frame_align"))
    (recipe / "utils").unlink()
    (recipe / "utils").symlink_to(UTILS)
    stubs.mkdir()
    (stubs / "fakecmd").write_text('#!/usr/bin/env bash\necho "$*" > "$(dirname "$0")/cmd.args"\nexit 1\n')
    (stubs / "fakecmd").chmod(0o755)
    (recipe / "data/vox2_dev").mkdir(parents=True)
    (recipe / "data/vox2_dev/wav.scp").write_text("u1 a.wav\nu2 b.wav\n")
    (recipe / "data/vox2_dev/feats.scp").write_text("u1 f.ark:10\nu2 f.ark:20\n")
    proc = run(["./run.sh", "--layout", "official", "--stage", 5, "--stop-stage", 5, "--nj", 2, "--device", device,
                "--cmd", "fakecmd"], cwd=recipe, extra_path=stubs, check=False)
    assert proc.returncode == 1
    args = (stubs / "cmd.args").read_text()
    assert f"avtk extract-embeddings --model exp/speaker/avg_model.pt --device {device} --input-type feats " \
           f"--num-workers {workers} scp:" in args, args


@pytest.mark.parametrize("kind,utts", [("wav", ["u00", "u01", "u02", "u05", "u07"]),
                                       ("feats", ["f0", "f1", "f2", "f4", "f5"])])
def test_validation_reads_ahead_the_same_items_and_eer(data, tmp_path, kind, utts):
    from avtk.embed import load_model, read_items, validation_eer

    keys = set(utts[:4])
    for workers in (0, 2):
        items, skipped = read_items(data, kind, keys, workers)
        items = list(items)
        if workers == 0:
            serial = items
    assert [k for k, _ in items] == [k for k, _ in serial] == sorted(keys) and skipped == []
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for (_, a), (_, b) in zip(serial, items))
    trials = tmp_path / "trials"
    a, b, c, d, e = utts
    trials.write_text(f"{a} {b} target\n{a} {c} nontarget\n{d} {e} target\n{b} {e} nontarget\n{c} {d} nontarget\n")
    net, _ = load_model(data / "m.pt")
    eers = [validation_eer(net, data, trials, kind, "cpu", 20000, num_workers=w) for w in (0, 2)]
    assert eers[0] == eers[1]


def test_validation_names_a_bad_utterance_read_by_a_worker(data, tmp_path):
    from avtk.embed import load_model, validation_eer

    bad = tmp_path / "bad.wav"
    message = _nan(bad).format(p=bad)
    (tmp_path / "wav.scp").write_text((data / "wav.scp").read_text() + f"u09 {bad}\n")
    (tmp_path / "trials").write_text("u00 u01 target\nu02 u09 nontarget\n")
    net, _ = load_model(data / "m.pt")
    for workers in (0, 2):
        with pytest.raises(AvtkError) as err:
            validation_eer(net, tmp_path, tmp_path / "trials", "wav", "cpu", 20000, num_workers=workers)
        assert str(err.value) == f"utterance u09: {message}"


def test_an_empty_matrix_batched_with_others_is_skipped_not_a_traceback(data):
    """Kaldi's empty matrix is 0 x 0: batched with 80-dim features it is padding only, and skipped."""
    from avtk.embed import embed, load_network

    net = load_network(data / "m.pt")[0]
    rng = np.random.default_rng(0)
    items = [("a", rng.normal(size=(120, 80)).astype(np.float32)), ("b", np.zeros((0, 0), np.float32)),
             ("c", rng.normal(size=(90, 80)).astype(np.float32))]
    skipped = []
    out = dict(embed(net, items, "feats", skipped=skipped))
    assert sorted(out) == ["a", "c"] and skipped == ["b"]
    alone = dict(embed(net, items[:1], "feats"))
    assert np.allclose(out["a"], alone["a"], atol=1e-5)
