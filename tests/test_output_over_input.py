"""An output never replaces a file the command read (avtk.io.atomic.note_input / refuse_input).

Each case runs `avtk ...` as a user does and names an output that is one of the command's inputs by another
spelling where it can (./x, an absolute path, a symlink, a hard link): the command exits 1 with one ERROR
naming the output and the input, no traceback, and every file of the working directory is byte-identical
afterwards (nothing replaced, no output or temporary file left). The cases cover each way the breaker found
(files behind an input table, option files, commands that named no inputs, SCORES.missing); the last tests
show the deliberate in-place rewrites still work.
"""
import hashlib
import os

import numpy as np
import pytest
import soundfile

from conftest import SMALL_SPEAKER, avtk, write_model

UTTS = [f"u{i}" for i in range(1, 7)]
SPK = {u: f"s{(i + 1) // 2}" for i, u in enumerate(UTTS, 1)}  # u1 u2 -> s1, u3 u4 -> s2, u5 u6 -> s3


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working directory of small inputs: data dir d (wavs of 1 and 3 s, face frames), embeddings, cohort,
    trials, scores, a gallery, features and a model file."""
    from PIL import Image

    from avtk.io.ark import open_writer

    w = tmp_path_factory.mktemp("work")
    rng = np.random.default_rng(0)
    d = w / "d"
    wav, frames, dur = [], [], []
    for i, u in enumerate(UTTS):
        seconds = 1 if i % 2 == 0 else 3
        (d / "wav").mkdir(parents=True, exist_ok=True)
        soundfile.write(d / "wav" / f"{u}.wav", rng.uniform(-0.3, 0.3, 16000 * seconds).astype(np.float32), 16000)
        (d / "frames" / u).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / "frames" / u / "0001.png")
        wav.append(f"{u} {d}/wav/{u}.wav\n")
        frames.append(f"{u} {d}/frames/{u}\n")
        dur.append(f"{u} {seconds}\n")
    _write(d / "wav.scp", "".join(wav))
    _write(d / "frames.scp", "".join(frames))
    _write(d / "utt2dur", "".join(dur))
    _write(d / "utt2spk", "".join(f"{u} {SPK[u]}\n" for u in UTTS))
    _write(d / "spk2utt", "s1 u1 u2\ns2 u3 u4\ns3 u5 u6\n")
    with open_writer(f"ark,scp:{w}/emb.ark,{w}/emb.scp") as writer:
        for u in UTTS:
            writer[u] = rng.standard_normal(8).astype(np.float32)
    with open_writer(f"ark,scp:{w}/coh.ark,{w}/coh.scp") as writer:
        for i in range(5):
            writer[f"c{i}"] = rng.standard_normal(8).astype(np.float32)
    with open_writer(f"ark,scp:{w}/feats.ark,{w}/feats.scp") as writer:
        for u in UTTS[:2]:
            writer[u] = rng.standard_normal((20, 80)).astype(np.float32)
    _write(w / "coh.u2s", "c0 k1\nc1 k1\nc2 k2\nc3 k2\nc4 k3\n")
    _write(w / "u2s", "".join(f"{u} {SPK[u]}\n" for u in UTTS))
    _write(w / "trials", "u1 u2 target\nu1 u3 nontarget\nu3 u4 target\nu2 u5 nontarget\n")
    _write(w / "trials.miss", "u1 u2 target\nu1 u9 nontarget\n")
    _write(w / "o2.missing", "u1 u2 target\nu1 u9 nontarget\n")
    _write(w / "sm", "u1 u2 0.9 target\nu1 u3 0.1 nontarget\nu3 u4 0.8 target\nu2 u5 0.2 nontarget\n")
    _write(w / "sA", "u1 u2 0.9 target\nu1 u3 0.1 nontarget\nu3 u4 0.8 target\nu2 u5 0.2 nontarget\n")
    _write(w / "sB", "u1 u2 0.7 target\nu1 u3 0.3 nontarget\nu3 u4 0.6 target\nu2 u5 0.4 nontarget\n")
    _write(w / "enr", "s1 u1\ns2 u3\n")
    _write(w / "idr", "u2 s1 s1 0.6 s2 0.4\nu4 s2 s2 0.6 s1 -0.1\n")
    _write(w / "truth.txt", "u1 s1 s2\n")
    _write(w / "sub" / "wav.scp", "u1 x\nu2 x\n")  # subset-data-dir's --utt-list, inside its output dir
    (w / "comb").mkdir()
    (w / "comb" / "utt2spk").symlink_to(d / "utt2spk")  # combine-data's output dir holds a link to an input
    write_model(w / "m.pt", SMALL_SPEAKER)
    os.link(w / "m.pt", w / "mlink.pt")
    avtk("enroll", "--utt2spk", "u2s", "scp:emb.scp", "ark,scp:g0.ark,g0.scp", cwd=w)
    # --config files (configargparse's, of every command but train)
    _write(w / "score.yaml", "trials: trials\n")
    _write(w / "split.yaml", "utt2spk: u2s\n")
    _write(w / "fb.yaml", "num-mel-bins: 40\n")
    _write(w / "fuse.yaml", "method: mean\nout: ./fuse.yaml\n")
    _write(w / "id.yaml", "top-k: 2\n")
    (w / "mo.onnx").write_bytes((w / "m.pt").read_bytes())  # a model file named like an ONNX graph
    (w / "msym.pt").symlink_to(w / "m.pt")
    return w


def _state(root):
    """{relative path: sha256} of every file under root (symlinks by their target name)."""
    state = {}
    for top, dirs, files in os.walk(root):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(top, x))]:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            state[rel] = "link:" + os.readlink(path) if os.path.islink(path) else \
                hashlib.sha256(open(path, "rb").read()).hexdigest()
    return state


W = "{w}"  # replaced by the working directory in arguments and expected names

CASES = {
    # files behind an input table: the ark an scp points to, the wavs of a wav.scp, the frames of frames.scp
    "copy-feats: the ark behind the input scp": (
        ["copy-feats", "scp:feats.scp", "ark,scp:feats.ark,o.scp"], "feats.ark", f"{W}/feats.ark"),
    "compute-fbank: a wav of the input wav.scp": (
        ["compute-fbank", "scp:d/wav.scp", "ark,scp:d/wav/u1.wav,o.scp"], "d/wav/u1.wav", f"{W}/d/wav/u1.wav"),
    "extract-baseline --modality face: a frame of frames.scp": (
        ["extract-baseline", "--modality", "face", "d", "ark,scp:d/frames/u2/0001.png,o.scp"],
        "d/frames/u2/0001.png", f"{W}/d/frames/u2/0001.png"),
    # option files and data-dir files
    "extract-embeddings: a hard link to --model": (
        ["extract-embeddings", "--model", "m.pt", "scp:d/wav.scp", "ark,scp:mlink.pt,o.scp"], "mlink.pt", "m.pt"),
    "score: --cohort-utt2spk": (
        ["score", "--trials", "trials", "--cohort", "scp:coh.scp", "--cohort-utt2spk", "coh.u2s", "scp:emb.scp",
         "./coh.u2s"], "./coh.u2s", "coh.u2s"),
    "cleanse --report over --truth": (
        ["cleanse", "--audio-emb", "scp:emb.scp", "--truth", "truth.txt", "--report", "./truth.txt", "d"],
        "./truth.txt", "truth.txt"),
    "compute-metrics --json over --trials": (
        ["compute-metrics", "--trials", "trials", "--json", f"{W}/trials", "sm"], f"{W}/trials", "trials"),
    "make-calibration-trials over the data dir's utt2dur": (
        ["make-calibration-trials", "--num-trials", "2", "--short-min", "0.5", "--short-max", "2", "--long-min", "2",
         "d", "./d/utt2dur"], "./d/utt2dur", "d/utt2dur"),
    # commands that named no inputs to their outputs
    "enroll: the ark behind the embeddings": (
        ["enroll", "--utt2spk", "u2s", "scp:emb.scp", "ark,scp:emb.ark,g.scp"], "emb.ark", f"{W}/emb.ark"),
    "identify: the gallery's spk2utt": (
        ["identify", "scp:g0.scp", "scp:emb.scp", "./g0.spk2utt"], "./g0.spk2utt", "g0.spk2utt"),
    "fuse --out over an input": (["fuse", "--method", "mean", "--out", "./sA", "sA", "sB"], "./sA", "sA"),
    "split-scp over its scp": (["split-scp", "emb.scp", "p1.scp", "./emb.scp"], "./emb.scp", "emb.scp"),
    "extract-baseline over the data dir's wav.scp": (
        ["extract-baseline", "d", "ark,scp:o.ark,./d/wav.scp"], "./d/wav.scp", "d/wav.scp"),
    "cleanse --out-list over utt2spk": (
        ["cleanse", "--audio-emb", "scp:emb.scp", "--out-list", "./d/utt2spk", "d"], "./d/utt2spk", "d/utt2spk"),
    "compute-metrics --json over the scores": (["compute-metrics", "--json", "./sm", "sm"], "./sm", "sm"),
    "compute-metrics --det-plot over the scores": (["compute-metrics", "--det-plot", "./sm", "sm"], "./sm", "sm"),
    "compute-id-metrics --json over --utt2spk": (
        ["compute-id-metrics", "--utt2spk", "u2s", "--enrolled", "enr", "--json", "./u2s", "idr"], "./u2s", "u2s"),
    "subset-data-dir: its --utt-list in the output dir": (
        ["subset-data-dir", "--utt-list", "./sub/wav.scp", "d", "sub"], "sub/wav.scp", "./sub/wav.scp"),
    "combine-data: an output that is a symlink to an input": (["combine-data", "comb", "d"], "comb/utt2spk",
                                                             "d/utt2spk"),
    # the command's own --config file (read while the arguments are parsed)
    "score: its --config file": (["score", "--config", "score.yaml", "scp:emb.scp", "score.yaml"], "score.yaml",
                                 "score.yaml"),
    "split-scp: its --config file as ./": (["split-scp", "--config", "split.yaml", "emb.scp", "p1.scp",
                                            "./split.yaml"], "./split.yaml", "split.yaml"),
    "compute-fbank --write-num-frames over its --config": (
        ["compute-fbank", "--config", "fb.yaml", "scp:d/wav.scp", "ark,scp:o.ark,o.scp", "--write-num-frames",
         f"{W}/fb.yaml"], f"{W}/fb.yaml", "fb.yaml"),
    "fuse: out: in its --config names the config": (["fuse", "--config", "fuse.yaml", "sA", "sB"], "./fuse.yaml",
                                                    "fuse.yaml"),
    "identify: its --config file as ./": (["identify", "--config", "id.yaml", "scp:g0.scp", "scp:emb.scp",
                                           "./id.yaml"], "./id.yaml", "id.yaml"),
    # export: the graph over its --model, refused before the export, so no OUT.json describes a graph never written
    "export --format onnx over its --model": (["export", "--model", "mo.onnx", "--format", "onnx", "mo.onnx"],
                                              "mo.onnx", "mo.onnx"),
    "export over a symlink to its --model": (["export", "--model", "m.pt", "msym.pt"], "msym.pt", "m.pt"),
    "export over a hard link to its --model, by ./": (["export", "--model", "m.pt", "./mlink.pt"], "./mlink.pt",
                                                      "m.pt"),
    # score --allow-missing: SCORES.missing is an output too
    "score --allow-missing: --trials is SCORES.missing": (
        ["score", "--trials", "o2.missing", "--allow-missing", "scp:emb.scp", "o2"], "o2.missing", "o2.missing"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_output_over_an_input_is_refused_and_nothing_changes(work, case):
    argv, output, read_as = CASES[case]
    argv = [a.replace(W, str(work)) for a in argv]
    output, read_as = output.replace(W, str(work)), read_as.replace(W, str(work))
    before = _state(work)
    proc = avtk(*argv, cwd=work, check=False)
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1, proc.stderr
    shown = "" if read_as == output else f" (read as {read_as})"
    assert errors[0].endswith(f"] {output}: is also an input of this command{shown}; give each output its own "
                              "file"), errors[0]
    assert _state(work) == before  # the input byte-identical, no output and no temporary file left


def test_score_missing_list_and_write_quality_as_one_file(work):
    """With --allow-missing, SCORES.missing is written in the scores' atomic group: --write-quality naming the
    same file is refused and neither appears (it used to be written twice, the missing list lost)."""
    before = _state(work)
    proc = avtk("score", "--trials", "trials.miss", "--cohort", "scp:coh.scp", "--write-quality", "./o3.missing",
                "--allow-missing", "scp:emb.scp", "o3", cwd=work, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "] ./o3.missing: is written twice by this command (also as o3.missing); give each output its own " \
           "file" in proc.stderr, proc.stderr
    assert _state(work) == before


def test_deliberate_rewrites_still_work(work, tmp_path):
    """fix-data-dir rewrites the tables it read, verify --set-threshold the model it read (replaces_input), and
    a rerun of score over its own earlier output (not an input) replaces it."""
    d = tmp_path / "d"
    d.mkdir()
    for name in ("wav.scp", "utt2spk", "spk2utt", "utt2dur"):
        (d / name).write_text((work / "d" / name).read_text())
    (d / "utt2dur").write_text("".join(line for line in (d / "utt2dur").read_text().splitlines(True)
                                       if not line.startswith("u6 ")))
    avtk("fix-data-dir", d)
    assert "u6" not in (d / "utt2spk").read_text() and (d / ".backup" / "utt2spk").exists()
    model = tmp_path / "m.pt"
    model.write_bytes((work / "m.pt").read_bytes())
    avtk("verify", "--model", model, "--set-threshold", "0.3")
    from avtk.embed import read_model_file

    assert read_model_file(model)["verify"]["threshold"] == pytest.approx(0.3)
    for _ in range(2):
        avtk("score", "--trials", work / "trials", f"scp:{work}/emb.scp", tmp_path / "scores")
    assert len((tmp_path / "scores").read_text().splitlines()) == 4


def test_the_registry_rules(tmp_path):
    """note_input records only inside command_inputs; a hard link and a symlink to an input are found by
    input_of; a file whose inode was freed and reused is not; replaces_input lets a write through."""
    from avtk.errors import AvtkError
    from avtk.io import atomic

    a = tmp_path / "a.txt"
    a.write_text("in\n")
    atomic.note_input(a)  # outside a command: nothing recorded
    with atomic.atomic_open(a) as f:
        f.write("out\n")
    assert a.read_text() == "out\n"
    with atomic.command_inputs():
        atomic.note_input(a)
        os.link(a, tmp_path / "hard.txt")
        (tmp_path / "soft.txt").symlink_to(a)
        assert atomic.input_of(tmp_path / "hard.txt") == str(a)
        assert atomic.input_of(tmp_path / "soft.txt") == str(a)
        with pytest.raises(AvtkError, match=r"hard\.txt: is also an input of this command \(read as .*a\.txt\)"):
            with atomic.atomic_open(tmp_path / "hard.txt") as f:
                f.write("x\n")
        with pytest.raises(AvtkError, match=r"soft\.txt: is also an input of this command \(read as .*a\.txt\)"):
            with atomic.atomic_group():
                with atomic.atomic_open(tmp_path / "soft.txt") as f:
                    f.write("x\n")
        assert a.read_text() == "out\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "hard.txt",
                                                                                           "soft.txt"]
        with atomic.atomic_open(a, replaces_input=True) as f:
            f.write("rewritten\n")
        assert a.read_text() == "rewritten\n"
        os.remove(tmp_path / "hard.txt")  # a.txt is a new file now (the rename): its old inode is gone
        (tmp_path / "new.txt").write_text("new\n")
        assert atomic.input_of(tmp_path / "new.txt") is None
    with atomic.atomic_open(a) as f:  # the command is over
        f.write("after\n")
    assert a.read_text() == "after\n"


def test_bulk_media_files_are_recorded_up_to_a_cap_and_only_by_the_command_process(tmp_path, monkeypatch):
    """Wavs and frames (bulk=True) are recorded by inode, at most _BULK_CAP per command (a training run over
    millions of frames must not grow without bound), and a data-loader worker (another pid) records nothing."""
    from avtk.io import atomic

    files = []
    for name in ("a.wav", "b.wav", "c.wav"):
        (tmp_path / name).write_bytes(b"RIFF")
        files.append(tmp_path / name)
    monkeypatch.setattr(atomic, "_BULK_CAP", 2)
    with atomic.command_inputs():
        for path in files:
            atomic.note_input(path, bulk=True)
        assert [atomic.input_of(p) for p in files] == [str(files[0]), str(files[1]), None]
        monkeypatch.setattr(atomic._INPUTS, "pid", -1)  # as in a forked worker
        atomic.note_input(tmp_path / "c.wav")
        assert atomic.input_of(tmp_path / "c.wav") is None


def _raw_frames(root, utts, linked_landmarks=False):
    """root/raw/<utt>/0010.jpg (a 112x112 frame of noise) with a landmarks.txt on the 112x112 template (or a
    symlink to one in root/lm) and root/raw.scp; returns the scp."""
    from PIL import Image

    from avtk.face.align import TEMPLATE_112

    lines, rng = [], np.random.default_rng(0)
    for utt in utts:
        d = root / "raw" / utt
        d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(d / "0010.jpg")
        marks = "0010.jpg " + " ".join(map(str, TEMPLATE_112.ravel())) + "\n"
        if linked_landmarks:
            _write(root / "lm" / f"{utt}.txt", marks)
            (d / "landmarks.txt").symlink_to(root / "lm" / f"{utt}.txt")
        else:
            _write(d / "landmarks.txt", marks)
        lines.append(f"{utt} {d}\n")
    _write(root / "raw.scp", "".join(lines))
    return root / "raw.scp"


@pytest.mark.parametrize("scp, read_as", [("./raw.scp", "raw.scp"), ("raw/u2/landmarks.txt",
                                                                        f"{W}/raw/u2/landmarks.txt")])
def test_extract_face_frames_refused_writes_no_frame(tmp_path, scp, read_as):
    """The frames scp over the input scp is refused before any frame is written; over a landmarks.txt (read
    only when its utterance is reached) the frames already aligned are never published: the output tree
    holds nothing and every file is as before."""
    _raw_frames(tmp_path, ["u1", "u2", "u3"])
    avtk("extract-face-frames", "--detector", "landmarks", "raw.scp", "ok", "ok.scp", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "ok" / "u3").iterdir()) == ["0010.jpg"]  # the run works
    before = _state(tmp_path)
    proc = avtk("extract-face-frames", "--detector", "landmarks", "raw.scp", "al", scp, cwd=tmp_path, check=False)
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert errors[0].endswith(f"] {scp}: is also an input of this command (read as {read_as.replace(W, str(tmp_path))})"
                              "; give each output its own file"), errors[0]
    assert _state(tmp_path) == before
    assert not (tmp_path / "al").exists()  # no frame, no utterance directory, and no OUT_DIR of its own


def test_extract_face_frames_into_its_raw_frames_is_refused(tmp_path):
    """OUT_DIR the raw tree itself: each utterance directory holds the frames just read (recorded by inode only,
    as every frame and wav is) and its landmarks.txt is a symlink elsewhere, so only those frames tell that
    replacing the directory would destroy an input; they do: refused, every raw frame as before (this run used
    to exit 0 with the raw frames replaced by the aligned ones and the landmarks links gone)."""
    _raw_frames(tmp_path, ["u1", "u2"], linked_landmarks=True)
    before = _state(tmp_path)
    proc = avtk("extract-face-frames", "--detector", "landmarks", "raw.scp", "raw", "al.scp", cwd=tmp_path,
                check=False)
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert errors[0].endswith(f"] {tmp_path}/raw/u1: is also an input of this command (read as {tmp_path}/raw/u1/"
                              "0010.jpg); give each output its own file"), errors[0]
    assert _state(tmp_path) == before
