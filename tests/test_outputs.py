"""Outputs that cannot be written (issue 12, kind 8): a path under a regular file (ENOTDIR), a directory where a
file should be (EISDIR) and a full disk (/dev/full, or the atomic writers' temporary files sent to /dev/full
in-process) give one ERROR line naming the output, exit 1, no traceback and no complete-looking output; stale
temporary files of dead jobs are removed by the next writer. Tests run as root, so read-only directories
(chmod) would not stop them: these are the failures root meets too. run.pl's logs: tests/test_jobs.py."""
import os
import subprocess
import sys

import kaldiio
import numpy as np
import pytest
from PIL import Image

from avtk import cli
from avtk.errors import AvtkError
from avtk.face.align import TEMPLATE_112
from avtk.io import ark as arkio
from avtk.io import atomic
from conftest import SMALL_SPEAKER, avtk, run, write_model

NO_SPACE = "No space left on device"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Embeddings and trials, a scores file, a small speaker model, a one-frame face directory with landmarks."""
    root = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    kaldiio.save_ark(str(root / "emb.ark"), {f"u{i}": rng.standard_normal(8).astype(np.float32) for i in range(4)},
                     scp=str(root / "emb.scp"))
    (root / "trials").write_text("u0 u1 target\nu0 u2 nontarget\nu1 u3 nontarget\nu2 u3 target\n")
    avtk("score", "--trials", root / "trials", f"scp:{root}/emb.scp", root / "scores.txt")
    write_model(root / "model.pt", SMALL_SPEAKER)
    (root / "raw").mkdir()
    Image.fromarray(np.full((112, 112, 3), 128, np.uint8)).save(root / "raw/0010.jpg")
    (root / "raw/landmarks.txt").write_text("0010.jpg " + " ".join(map(str, TEMPLATE_112.ravel())) + "\n")
    (root / "faces.scp").write_text(f"u1 {root}/raw\n")
    return root


# command name -> (argument list with OUT where the output goes, how users run it)
COMMANDS = {
    "score": lambda d: ["score", "--trials", d / "trials", f"scp:{d}/emb.scp", "OUT"],
    "compute-metrics": lambda d: ["compute-metrics", "--json", "OUT", d / "scores.txt"],
    "fuse": lambda d: ["fuse", "--method", "mean", "--out", "OUT", d / "scores.txt", d / "scores.txt"],
    "split-scp": lambda d: ["split_scp", d / "emb.scp", "OUT", "part2.scp"],  # the utils/ script recipes call
    "export": lambda d: ["export", "--model", d / "model.pt", "--format", "torchscript", "--no-check", "OUT"],
    "extract-face-frames": lambda d: ["extract-face-frames", "--detector", "landmarks", d / "faces.scp", "aligned",
                                      "OUT"],
    "make-augment-sources": lambda d: ["make-augment-sources", "--num-noise", 1, "--num-music", 1, "--num-speech", 1,
                                       "--num-rirs", 1, "OUT", "augdata"],
}


def call(name, inputs, out, cwd):
    args = [out if a == "OUT" else a for a in COMMANDS[name](inputs)]
    if args[0] == "split_scp":
        return run(args, cwd=cwd, check=False)
    return avtk(*args, cwd=cwd, check=False)


def the_error(proc, command):
    """The one ERROR line's message; the run must have exited 1 without a traceback."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    head = f" ERROR [avtk {command}] "
    assert head in errors[0], errors[0]
    return errors[0].split(head, 1)[1]


def leftovers(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith(".tmp"))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_output_under_a_regular_file(inputs, tmp_path, name):
    (tmp_path / "afile").write_text("not a directory\n")
    out, named = "afile/out.txt", "afile/out.txt"
    if name == "make-augment-sources":  # an output directory: the error names the first file written there
        out, named = "afile/sources", "afile/sources/noise/noise-0001.wav"
    proc = call(name, inputs, out, tmp_path)
    assert the_error(proc, name) == f"cannot write {named}: afile is not a directory"
    assert (tmp_path / "afile").read_text() == "not a directory\n"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"make-augment-sources"}))  # its outputs are directories
def test_output_that_is_a_directory(inputs, tmp_path, name):
    (tmp_path / "outdir").mkdir()
    proc = call(name, inputs, "outdir", tmp_path)
    assert the_error(proc, name) == "cannot write outdir: Is a directory"
    assert os.listdir(tmp_path / "outdir") == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"make-augment-sources"}))
def test_output_on_a_full_disk(inputs, tmp_path, name):
    proc = call(name, inputs, "/dev/full", tmp_path)
    assert the_error(proc, name) == f"cannot write /dev/full: {NO_SPACE}"
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")  # written in place, never replaced
    assert leftovers("/dev") == []


def test_train_exp_that_cannot_be_a_directory(tmp_path):
    (tmp_path / "afile").write_text("")
    for exp, blocker in (("afile/exp", "afile"), ("afile", "afile")):
        proc = avtk("train", "--config", "none.yaml", "--train-data", "none", "--exp", exp, cwd=tmp_path, check=False)
        assert the_error(proc, "train") == f"cannot write {exp}: {blocker} is not a directory"  # before reading
    assert sorted(os.listdir(tmp_path)) == ["afile"]


@pytest.fixture
def full_disk(monkeypatch):
    """Every temporary file the atomic writers and the ark writer open for writing is /dev/full instead."""
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax") and os.path.basename(os.fspath(path)).endswith(".tmp"):
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)
    monkeypatch.setattr(arkio, "open", fake_open, raising=False)


def in_process(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    return subprocess.CompletedProcess(argv, rc, *capsys.readouterr())


def test_verify_set_threshold_on_a_full_disk(inputs, tmp_path, capsys, full_disk):
    model = tmp_path / "model.pt"
    model.write_bytes((inputs / "model.pt").read_bytes())
    proc = in_process(capsys, "verify", "--model", model, "--set-threshold", "0.3")
    assert the_error(proc, "verify") == f"cannot write {model}: {NO_SPACE}"
    assert model.read_bytes() == (inputs / "model.pt").read_bytes() and leftovers(tmp_path) == []


def test_score_on_a_full_disk_in_process(inputs, tmp_path, capsys, full_disk):
    out = tmp_path / "scores.txt"
    proc = in_process(capsys, "score", "--trials", inputs / "trials", f"scp:{inputs}/emb.scp", out)
    assert the_error(proc, "score") == f"cannot write {out}: {NO_SPACE}"
    assert not out.exists() and leftovers(tmp_path) == []


# ---- the ark writer ------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("ark,scp:afile/e.ark,e.scp", "cannot write afile/e.ark: afile is not a directory"),
    ("ark,scp:e.ark,afile/e.scp", "cannot write afile/e.scp: afile is not a directory"),
    ("ark,scp:e.ark,outdir", "cannot write outdir: Is a directory"),
    ("ark:/dev/full", f"cannot write /dev/full: {NO_SPACE}"),
])
def test_ark_writer_outputs_that_cannot_be_written(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    (tmp_path / "outdir").mkdir()
    with pytest.raises(AvtkError) as err:
        with arkio.open_writer(spec) as writer:
            writer["u1"] = np.zeros(3, np.float32)
    assert str(err.value) == message
    assert sorted(os.listdir(tmp_path)) == ["afile", "outdir"]


def test_ark_writer_full_disk_names_the_file(tmp_path, full_disk):
    spec = f"ark,scp:{tmp_path}/e.ark,{tmp_path}/e.scp"
    with pytest.raises(AvtkError, match=f"^cannot write {tmp_path}/e.ark: {NO_SPACE}$"):
        with arkio.open_writer(spec) as writer:
            writer["u1"] = np.zeros(3, np.float32)
    assert os.listdir(tmp_path) == []


def test_dev_null_is_written_in_place(tmp_path):
    with arkio.open_writer(f"ark,scp:/dev/null,{tmp_path}/e.scp") as writer:
        writer["u1"] = np.zeros(3, np.float32)
    with atomic.atomic_open("/dev/null") as f:
        f.write("x\n")
    assert not os.path.isfile("/dev/null") and (tmp_path / "e.scp").read_text() == "u1 /dev/null:3\n"


# ---- stale temporary files -------------------------------------------------------------------

def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_jobs_are_removed_live_ones_kept(inputs, tmp_path):
    dead, live = dead_pid(), os.getpid()
    for name in (f".scores.txt.{dead}.tmp", f".scores.txt.{live}.tmp", f".other.txt.{dead}.tmp"):
        (tmp_path / name).write_text("partial")
    (tmp_path / f".aligned.{dead}.tmp").mkdir()  # a killed extract-face-frames' directory
    avtk("score", "--trials", inputs / "trials", f"scp:{inputs}/emb.scp", tmp_path / "scores.txt")
    # other outputs' temporaries are left to their own writers
    assert leftovers(tmp_path) == [f".aligned.{dead}.tmp", f".other.txt.{dead}.tmp", f".scores.txt.{live}.tmp"]
    assert atomic.remove_stale(tmp_path / "aligned") == [str(tmp_path / f".aligned.{dead}.tmp")]
    # the ark writer clears its own
    (tmp_path / f".e.ark.{dead}.tmp").write_text("partial")
    (tmp_path / f".e.scp.{dead}.tmp").write_text("partial")
    with arkio.open_writer(f"ark,scp:{tmp_path}/e.ark,{tmp_path}/e.scp") as writer:
        writer["u1"] = np.zeros(3, np.float32)
    assert leftovers(tmp_path) == [f".other.txt.{dead}.tmp", f".scores.txt.{live}.tmp"]


# --------------------------------------------------------------------------------------------------
# several outputs of one command: all appear, or none (atomic_group), and skipped ids in a side file


def write_wavs(root, lengths):
    """A wav.scp of 16 kHz 16-bit wavs of `lengths` samples (utterances u0, u1, ...)."""
    import soundfile

    rng = np.random.default_rng(0)
    lines = []
    for i, n in enumerate(lengths):
        path = root / f"u{i}.wav"
        soundfile.write(path, (rng.standard_normal(n) * 3000).astype(np.int16), 16000, subtype="PCM_16")
        lines.append(f"u{i} {path}\n")
    (root / "wav.scp").write_text("".join(lines))
    return root / "wav.scp"


def test_atomic_group_renames_all_or_none(tmp_path):
    with pytest.raises(AvtkError, match="^cannot write /dev/full: No space left on device$"):
        with atomic.atomic_group():
            with arkio.open_writer(f"ark,scp:{tmp_path}/o.ark,{tmp_path}/o.scp") as writer:
                writer["a"] = np.zeros(3, np.float32)
            with atomic.atomic_open(tmp_path / "t.txt") as f:
                f.write("x")
            with atomic.atomic_open("/dev/full") as f:
                f.write("x" * 100000)
    assert os.listdir(tmp_path) == []
    with atomic.atomic_group():
        with arkio.open_writer(f"ark,scp:{tmp_path}/o.ark,{tmp_path}/o.scp") as writer:
            writer["a"] = np.zeros(3, np.float32)
        with atomic.atomic_open(tmp_path / "t.txt") as f:
            f.write("x")
        assert sorted(p for p in os.listdir(tmp_path) if not p.endswith(".tmp")) == []
    assert sorted(os.listdir(tmp_path)) == ["o.ark", "o.scp", "t.txt"]


@pytest.mark.parametrize("where", ["/dev/full", "blk/n"])
def test_compute_fbank_num_frames_unwritable_leaves_no_table(tmp_path, where):
    write_wavs(tmp_path, [8000, 8000])
    (tmp_path / "blk").write_text("a file\n")
    proc = avtk("compute-fbank", "--write-num-frames", where, "scp:wav.scp", "ark,scp:o.ark,o.scp", cwd=tmp_path,
                check=False)
    reason = "No space left on device" if where == "/dev/full" else "blk is not a directory"
    assert the_error(proc, "compute-fbank") == f"cannot write {where}: {reason}"
    assert not (tmp_path / "o.ark").exists() and not (tmp_path / "o.scp").exists()
    assert leftovers(tmp_path) == []


def test_compute_fbank_lists_skipped_utterances(tmp_path):
    write_wavs(tmp_path, [8000, 160, 8000])  # u1: 10 ms, too short for one 25 ms frame
    (tmp_path / "o.skipped").write_text("stale 1\n")
    proc = avtk("compute-fbank", "scp:wav.scp", "ark,scp:o.ark,o.scp", cwd=tmp_path)
    warnings = [line for line in proc.stderr.splitlines() if " WARNING " in line]
    assert warnings[-1].endswith("skipped 1 of 3 utterances too short for one frame (ids in o.skipped)"), proc.stderr
    assert (tmp_path / "o.skipped").read_text() == "u1 too_short\n"
    assert [line.split()[0] for line in (tmp_path / "o.scp").read_text().splitlines()] == ["u0", "u2"]
    write_wavs(tmp_path, [8000])  # nothing skipped: the old list goes
    avtk("compute-fbank", "scp:wav.scp", "ark,scp:o.ark,o.scp", cwd=tmp_path)
    assert not (tmp_path / "o.skipped").exists()


@pytest.mark.parametrize("crops", [[], ["--seed-crops", "2"]])
def test_extract_embeddings_lists_skipped_utterances(inputs, tmp_path, crops):
    write_wavs(tmp_path, [8000, 160, 8000])  # u1: 10 ms, no frame
    proc = avtk("extract-embeddings", "--model", inputs / "model.pt", *crops, "scp:wav.scp", "ark,scp:e.ark,e.scp",
                cwd=tmp_path)
    warnings = [line for line in proc.stderr.splitlines() if " WARNING " in line]
    assert warnings[-1].endswith("skipped 1 of 3 utterances that give no frames (ids in e.skipped)"), proc.stderr
    assert (tmp_path / "e.skipped").read_text() == "u1 no_frames\n"
    assert [line.split()[0] for line in (tmp_path / "e.scp").read_text().splitlines()] == ["u0", "u2"]


def test_extract_embeddings_empty_table_warns(inputs, tmp_path):
    (tmp_path / "feats.scp").write_text("")
    proc = avtk("extract-embeddings", "--model", inputs / "model.pt", "--input-type", "feats", "scp:feats.scp",
                "ark,scp:e.ark,e.scp", cwd=tmp_path)
    warnings = [line for line in proc.stderr.splitlines() if " WARNING " in line]
    assert warnings[-1].endswith("wrote no embeddings: scp:feats.scp is empty"), proc.stderr
    assert (tmp_path / "e.scp").read_text() == ""


def test_extract_embeddings_skipped_file_unwritable_leaves_no_table(inputs, tmp_path):
    write_wavs(tmp_path, [8000, 160])
    proc = avtk("extract-embeddings", "--model", inputs / "model.pt", "--skipped", "/dev/full", "scp:wav.scp",
                "ark,scp:e.ark,e.scp", cwd=tmp_path, check=False)
    assert the_error(proc, "extract-embeddings") == "cannot write /dev/full: No space left on device"
    assert sorted(os.listdir(tmp_path)) == ["u0.wav", "u1.wav", "wav.scp"]


def test_split_scp_second_part_unwritable_leaves_no_first(inputs, tmp_path):
    (tmp_path / "blk").write_text("a file\n")
    for second, reason in (("blk/o2", "blk is not a directory"), ("/dev/full", "No space left on device")):
        proc = run(["split_scp", inputs / "emb.scp", "o1", second], cwd=tmp_path, check=False)
        assert the_error(proc, "split-scp") == f"cannot write {second}: {reason}"
        assert sorted(os.listdir(tmp_path)) == ["blk"]


def test_compute_metrics_plot_unwritable_leaves_no_json(inputs, tmp_path):
    (tmp_path / "blk").write_text("a file\n")
    proc = avtk("compute-metrics", "--json", "m.json", "--det-plot", "blk/d.png", inputs / "scores.txt",
                cwd=tmp_path, check=False)
    assert the_error(proc, "compute-metrics") == "cannot write blk/d.png: blk is not a directory"
    assert sorted(os.listdir(tmp_path)) == ["blk"]
    proc = avtk("compute-metrics", "--json", "m.json", "--det-plot", "/dev/full", inputs / "scores.txt",
                cwd=tmp_path, check=False)
    assert "No space left on device" in the_error(proc, "compute-metrics")
    assert sorted(os.listdir(tmp_path)) == ["blk"]


def test_atomic_group_checks_directories_first(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(AvtkError, match=f"^cannot write {tmp_path}/afile: {tmp_path}/afile is not a directory$"):
        with atomic.atomic_group(tmp_path / "l.txt", dirs=[tmp_path / "afile"]):
            raise AssertionError("the work must not start")


def small_data_dir(root):
    """A data dir of 2 utterances of 2 speakers (wav.scp, utt2spk, spk2utt) over short wavs."""
    data = root / "data"
    data.mkdir()
    write_wavs(data, [8000, 8000])
    (data / "utt2spk").write_text("u0 s0\nu1 s1\n")
    (data / "spk2utt").write_text("s0 u0\ns1 u1\n")
    return data


@pytest.mark.parametrize("argv, out, error", [
    (["subset-data-dir", "--first", "1", "data", "blk"], "blk", "cannot write blk: blk is not a directory"),
    (["combine-data", "blk/out", "data"], "blk/out", "cannot write blk/out: blk is not a directory"),
])
def test_data_dir_output_under_a_file(tmp_path, argv, out, error):
    small_data_dir(tmp_path)
    (tmp_path / "blk").write_text("a file\n")
    proc = avtk(*argv, cwd=tmp_path, check=False)
    assert the_error(proc, argv[0]) == error
    assert (tmp_path / "blk").read_text() == "a file\n"


def test_a_command_never_writes_one_file_twice_or_over_its_input(tmp_path):
    """atomic_group's rule for every command's outputs: two outputs that are one file (by any name: a relative
    path, a symlink), or an output that is an input, are an AvtkError naming it, and no output appears."""
    (tmp_path / "in.scp").write_text("a x\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "one.txt")
    with pytest.raises(AvtkError, match=r"link\.txt: is written twice by this command \(also as .*one\.txt\)"):
        with atomic.atomic_group():
            with atomic.atomic_open(tmp_path / "one.txt") as f:
                f.write("first\n")
            with atomic.atomic_open(tmp_path / "link.txt") as f:
                f.write("second\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.scp", "link.txt"]
    with pytest.raises(AvtkError, match=r"in\.scp: is also an input of this command"):
        with atomic.atomic_group(inputs=[tmp_path / "in.scp"]):
            with arkio.open_writer(f"ark,scp:{tmp_path}/o.ark,{tmp_path}/in.scp") as w:
                w["a"] = np.ones(3, dtype=np.float32)
    assert (tmp_path / "in.scp").read_text() == "a x\n" and not (tmp_path / "o.ark").exists()
    with pytest.raises(AvtkError, match=r"in\.scp: is also an input of this command"):
        with atomic.atomic_group(tmp_path / "in.scp", inputs=[tmp_path / "in.scp"]):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.scp", "link.txt"]


@pytest.mark.parametrize("command", ["compute-fbank", "extract-embeddings", "score"])
def test_an_output_over_the_commands_input_is_refused_and_the_input_kept(inputs, tmp_path, command):
    """The commands that read a table and write another name their inputs to their atomic_group: writing the
    output over one is an error naming it, and the input is untouched (a Kaldi slip: feats.scp over wav.scp)."""
    import soundfile

    d = tmp_path
    soundfile.write(d / "a.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)
    (d / "wav.scp").write_text(f"u0 {d}/a.wav\n")
    if command == "compute-fbank":
        victim, args = d / "wav.scp", ["compute-fbank", f"scp:{d}/wav.scp", f"ark,scp:{d}/o.ark,{d}/wav.scp"]
    elif command == "extract-embeddings":
        victim = d / "wav.scp"
        args = ["extract-embeddings", "--model", inputs / "model.pt", f"scp:{d}/wav.scp", f"ark,scp:{d}/o.ark,{d}/wav.scp"]
    else:
        (d / "trials").write_text((inputs / "trials").read_text())
        victim, args = d / "trials", ["score", "--trials", d / "trials", f"scp:{inputs}/emb.scp", d / "trials"]
    before = victim.read_bytes()
    proc = avtk(*args, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{victim}: is also an input of this command; give each output its own file" in proc.stderr
    assert victim.read_bytes() == before
    assert sorted(p.name for p in d.iterdir()) == sorted({"a.wav", "wav.scp", victim.name})
