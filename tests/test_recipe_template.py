"""egs/TEMPLATE as a user runs it: the directory copied outside the repository (no utils symlink: path.sh finds
avtk's helpers through `avtk utils-dir`), pointed at read-only Kaldi data dirs that the test builds with
make-synthetic-corpus. Audio-only (audio input with speed perturbation, MUSAN/RIR augmentation from --musan/--rirs,
two test sets, calibration on the dev set), then audio-visual (fbank input, one set's faces aligned from its raw
frames, fusion), then fine-tuning from the audio-only model (--init-model). The given data dirs stay byte for
byte as they were; bad options stop at once with one ERROR line."""
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, UTILS, avtk
from test_augment_corpora import MUSAN, ROOMS, _wav

TINY_SPEAKER = ("model.encoder_args.channels=32 model.encoder_args.embed_dim=16 model.encoder_args.pooled=96 "
                "model.encoder_args.attention=16 data.batch_size=8 data.crop_seconds=1.0 data.num_workers=0 "
                "runtime.epochs=2 runtime.log_interval=2 runtime.average_last=2 runtime.device=cpu runtime.threads=1")
TINY_FACE = ("model.encoder_args.width=4 model.encoder_args.embed_dim=16 data.batch_size=8 runtime.epochs=2 "
             "runtime.log_interval=2 runtime.average_last=2 runtime.val_interval=1 runtime.device=cpu "
             "runtime.threads=1")


def _env():
    """The user's environment: this Python's bin (avtk, python3) first, and no repository utils/ on PATH."""
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and Path(p).resolve() != UTILS.resolve() and not Path(p).resolve().is_relative_to(REPO / "egs")]
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent)] + keep), "LC_ALL": "C"}


def recipe(cwd, *args):
    """./run.sh ARGS in the recipe copy CWD: the CompletedProcess (stdout and stderr together in .stdout)."""
    return subprocess.run(["./run.sh", *map(str, args)], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def copy_recipe(dest):
    shutil.copytree(REPO / "egs/TEMPLATE", dest,
                    ignore=shutil.ignore_patterns("data", "exp", "fbank", "frame_align"))
    assert not dest.resolve().is_relative_to(REPO) and not (dest / "utils").exists()
    return dest


def tree_digest(root):
    """sha256 over every path under ROOT with its mode and contents: any write, new file or chmod shows."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            h.update(f"{path.relative_to(root)} {path.stat().st_mode:o}\n".encode())
            if path.is_file():
                h.update(path.read_bytes())
    return h.hexdigest()


def with_segments(data):
    """Rewrite DATA's wav.scp as recordings `rec-<utt>` and add segments cutting each utterance whole from its
    recording (utt2dur holds the exact durations: the synthetic corpus's are whole numbers of samples)."""
    wav = [line.split() for line in (data / "wav.scp").read_text().splitlines()]
    (data / "wav.scp").write_text("".join(f"rec-{utt} {path}\n" for utt, path in wav))
    durations = [line.split() for line in (data / "utt2dur").read_text().splitlines()]
    (data / "segments").write_text("".join(f"{utt} rec-{utt} 0.0 {dur}\n" for utt, dur in durations))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Read-only data dirs train (6 speakers), dev and test (4 each, trials; test without frames.scp, its faces
    come from raw_frames.scp), test_b and dev_b (test's audio and dev's, cut from recordings by segments), the
    MUSAN and RIRS_NOISES layouts, and the digest of it all."""
    root = tmp_path_factory.mktemp("corpora")
    avtk("make-synthetic-corpus", "--num-train-speakers", 6, "--num-test-speakers", 4, "--num-dev-speakers", 4,
         "--videos-per-speaker", 2, "--utts-per-video", 3, "--min-duration", 1.5, "--max-duration", 2.5,
         "--frame-interval", 0.8, root / "tree", root / "mine")
    (root / "mine/test/frames.scp").unlink()
    # test_b (audio only) and dev_b: test's and dev's utterances cut by segments from recordings of other names
    for name, src in (("test_b", "test"), ("dev_b", "dev")):
        shutil.copytree(root / "mine" / src, root / "other" / name)
        with_segments(root / "other" / name)
    (root / "other/test_b/raw_frames.scp").unlink()
    for i, stem in enumerate(MUSAN):
        _wav(root / "musan" / f"{stem}.wav", 1.0 + i * 0.25, seed=i)
    for r, room in enumerate(ROOMS):
        _wav(root / "RIRS_NOISES/simulated_rirs" / room / "Room001/Room001-00001.wav", 0.3, seed=10 + r)
    subprocess.run(["chmod", "-R", "a-w", root], check=True)
    digest = tree_digest(root)
    yield root, digest
    subprocess.run(["chmod", "-R", "u+w", root], check=True)


def metrics(run_dir, test, name):
    m = json.loads((run_dir / "exp/metrics" / test / f"{name}.json").read_text())
    assert (run_dir / "exp/metrics" / test / f"{name}.txt").read_text().startswith("EER ")
    assert m["trials"] == 72 and math.isfinite(m["eer"]) and 0 <= m["eer"] <= 1, (test, name, m)
    return m


def check_table(run_dir, test, systems):
    """The uncalibrated systems do better than chance; a calibration (an affine map fitted on the dev trials,
    whose slope a two-epoch network may get negative) keeps the ranking of the AS-Norm scores or reverses it."""
    for name in systems:
        if name.endswith(("cosine", "asnorm", "mean")):
            assert metrics(run_dir, test, name)["eer"] < 0.5, (test, name)
    asnorm = metrics(run_dir, test, "speaker_asnorm")["eer"]
    cal = metrics(run_dir, test, "speaker_calibrated")
    assert min(abs(cal["eer"] - asnorm), abs(cal["eer"] - (1 - asnorm))) < 0.03 and math.isfinite(cal["cllr"])


@pytest.fixture(scope="module")
def audio_run(corpus, tmp_path_factory):
    root, _ = corpus
    run_dir = copy_recipe(tmp_path_factory.mktemp("home") / "myrecipe")
    proc = recipe(run_dir, "--train-set", root / "mine/train", "--dev-set", root / "mine/dev",
                  "--test-sets", f"{root / 'mine/test'} {root / 'other/test_b'}", "--nj", 2, "--top-n", 5,
                  "--musan", root / "musan", "--rirs", root / "RIRS_NOISES", "--speaker-opts", TINY_SPEAKER)
    assert proc.returncode == 0, proc.stdout
    return run_dir, proc.stdout


@pytest.fixture(scope="module")
def av_run(corpus, tmp_path_factory):
    root, _ = corpus
    run_dir = copy_recipe(tmp_path_factory.mktemp("elsewhere") / "av")
    proc = recipe(run_dir, "--train-set", root / "mine/train", "--dev-set", root / "other/dev_b",
                  "--test-sets", root / "mine/test", "--modalities", "audio,face", "--face-detector", "landmarks",
                  "--nj", 1, "--top-n", 5, "--check-audio", "false",
                  "--speaker-opts", TINY_SPEAKER + " data.input=feats augment.speed_perturb=[]",
                  "--face-opts", TINY_FACE)
    assert proc.returncode == 0, proc.stdout
    return run_dir, proc.stdout


def test_path_sh_puts_the_installed_helpers_on_path(tmp_path):
    run_dir = copy_recipe(tmp_path / "copy")
    out = subprocess.run(["bash", "-c", ". ./path.sh && command -v parse_options.sh run.pl split_scp"],
                         cwd=run_dir, env=_env(), capture_output=True, text=True, check=True).stdout.split()
    where = avtk("utils-dir").stdout.strip()
    assert where == str(UTILS)  # the editable install: the source tree's own utils/
    assert out == [f"{where}/parse_options.sh", f"{where}/run.pl", f"{where}/split_scp"]


def test_help_lists_the_stages_and_every_option(tmp_path):
    run_dir = copy_recipe(tmp_path / "copy")
    proc = recipe(run_dir, "--help")
    assert proc.returncode == 0 and "Stages:" in proc.stdout
    usage, current = proc.stdout.split("Options (current values):")
    listed = set(usage.split("  Options:")[1].split())
    settable = {line.split()[0] for line in current.splitlines() if line.strip()} - {"--cmd"}  # cmd.sh's
    assert listed == settable


def test_a_normal_install_carries_the_helpers_in_the_package(tmp_path):
    """setup.py's build_py (what `pip install .` runs) copies utils/ into the package, executable bits kept, and
    that package's `avtk utils-dir` names its own copy; a package with neither copy nor source tree says so."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "avtk", src / "avtk", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(UTILS, src / "utils")
    shutil.copy(REPO / "setup.py", src)
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", "lib"], cwd=src, check=True,
                   capture_output=True)
    shutil.rmtree(src / "utils")
    env = {**os.environ, "PYTHONPATH": str(src / "lib")}
    out = subprocess.run([sys.executable, "-m", "avtk.cli", "utils-dir"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    copy = src / "lib/avtk/utils"
    assert out == f"{copy}\n"
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in UTILS.iterdir())
    assert all((copy / p.name).read_bytes() == p.read_bytes() and os.access(copy / p.name, os.X_OK)
               for p in UTILS.iterdir())
    shutil.rmtree(copy)
    proc = subprocess.run([sys.executable, "-m", "avtk.cli", "utils-dir"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"ERROR [avtk utils-dir] avtk's shell helpers (utils/parse_options.sh) are in neither {copy} nor "
            f"{src / 'lib/utils'}: reinstall avtk") in proc.stderr


def test_a_wheel_installed_in_a_fresh_environment_runs_outside_the_source_tree(tmp_path):
    """`pip wheel` of a copy of the source tree (setup.py's real build), installed with pip into a new virtual
    environment: its avtk is the installed one, lists every command and finds the helpers in its own package."""
    src = tmp_path / "src"
    for name in ("avtk", "utils"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.py", src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheel", src], check=True,
                   capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("avtk-*.whl")
    venv = tmp_path / "venv"  # the installed torch, numpy, ... are seen; avtk itself comes from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True, capture_output=True)
    subprocess.run([venv / "bin/python", "-m", "pip", "-q", "install", "--no-deps", "--no-index", wheel], check=True,
                   capture_output=True)
    shutil.rmtree(src)
    site = subprocess.run([venv / "bin/python", "-c", "import avtk, sysconfig; print(avtk.__file__); "
                           "print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, check=True, capture_output=True,
                          text=True).stdout.split()
    assert site[0] == f"{site[1]}/avtk/__init__.py"
    where = subprocess.run([venv / "bin/avtk", "utils-dir"], cwd=tmp_path, check=True, capture_output=True,
                           text=True).stdout.strip()
    assert where == f"{site[1]}/avtk/utils"
    assert all(os.access(f"{where}/{p.name}", os.X_OK) == os.access(p, os.X_OK) for p in UTILS.iterdir())
    listed = subprocess.run([venv / "bin/avtk", "--help"], cwd=tmp_path, check=True, capture_output=True,
                            text=True).stdout
    assert all(f.stem.replace("_", "-") in listed for f in (REPO / "avtk/bin").glob("[a-z]*.py"))


@pytest.mark.parametrize("args, message", [
    ([], "ERROR: --train-set DIR is required"),
    (["--train-set", "T"], "ERROR: --test-sets \"DIR ...\" is required"),
    (["--train-set", "mine/train", "--test-sets", "mine/test", "--modalities", "video"],
     "ERROR: --modalities is 'video'; choose audio or audio,face"),
    (["--train-set", "mine/train", "--test-sets", "mine/test other/test_b", "--dev-set", "x/test"],
     "ERROR: two of the data dirs are named 'test'"),
    (["--train-set", "mine/train", "--test-sets", "mine/test", "--dev-set", "/corpora/rirs"],
     "ERROR: a set cannot be named 'rirs' (the last component of its data dir's path; data/ holds the augmentation "
     "sources"),
    (["--train-set", "mine/train", "--test-sets", "nowhere/test"], "ERROR: no such data dir: nowhere/test"),
    (["--train-set", "mine/train", "--test-sets", "notrials"], "ERROR: notrials has no trials file"),
    (["--train-set", "mine/train", "--test-sets", "other/test_b", "--modalities", "audio,face"],
     "ERROR: other/test_b has no frames.scp, video.scp or raw_frames.scp"),
])
def test_bad_options_stop_with_one_error_before_writing(corpus, tmp_path, args, message):
    root, digest = corpus
    run_dir = copy_recipe(tmp_path / "r")
    for link in ("mine", "other"):
        (run_dir / link).symlink_to(root / link)
    shutil.copytree(root / "mine/train", run_dir / "notrials")  # a set without trials
    proc = recipe(run_dir, "--check-audio", "false", *args)
    assert proc.returncode == 1, proc.stdout
    assert message in proc.stdout and "Traceback" not in proc.stdout
    assert not (run_dir / "data").exists() and not (run_dir / "exp").exists()
    assert tree_digest(root) == digest


@pytest.mark.recipe
def test_audio_only_end_to_end(corpus, audio_run):
    root, digest = corpus
    run_dir, log = audio_run
    assert tree_digest(root) == digest  # read-only data dirs: untouched
    for name in ("train", "dev", "test", "test_b"):  # the copies, writable, with the sources' contents
        src = root / ("other" if name == "test_b" else "mine") / name
        for f in src.iterdir():
            assert (run_dir / "data" / name / f.name).read_bytes() == f.read_bytes()
        assert os.access(run_dir / "data" / name / "utt2spk", os.W_OK)
    assert "Stage 1: nothing to do" in log and not (run_dir / "data/train/feats.scp").exists()
    cfg = yaml.safe_load((run_dir / "exp/speaker/config.yaml").read_text())
    assert cfg["data"]["input"] == "wav" and cfg["augment"]["speed_perturb"] == [1.0, 0.9, 1.1]
    assert cfg["augment"]["wave"] is True and cfg["augment"]["rir_dir"] == "data/rirs"
    assert cfg["augment"]["noise_dir"] == "data/musan_noise" and cfg["model"]["encoder_args"]["channels"] == 32
    assert "training ecapa_tdnn on 36 utterances of 18 speakers" in log  # 6 speakers x 3 speeds
    assert (run_dir / "exp/speaker/validation.txt").exists()  # validated on the dev trials
    for test in ("test", "test_b"):
        assert len((run_dir / f"exp/speaker/emb/{test}.scp").read_text().splitlines()) == 24
        check_table(run_dir, test, ("speaker_cosine", "speaker_asnorm", "speaker_calibrated"))
        assert not (run_dir / "exp/metrics" / test / "fusion_mean.json").exists()
    # the same audio, whole files or cut by segments, and the same trials: the same scores
    for scoring in ("cosine", "asnorm"):
        scores = [(run_dir / f"exp/speaker/scores/{x}_{scoring}.txt").read_text() for x in ("test", "test_b")]
        assert scores[0] == scores[1] and len(scores[0].splitlines()) == 72
    table = (run_dir / "exp/RESULTS.md").read_text().splitlines()
    assert table[0] == "# Results (train: train, 6 speakers; calibration: dev)"
    assert sum(line.startswith("| test | speaker |") for line in table) == 3
    assert sum(line.startswith("| test_b | speaker |") for line in table) == 3


@pytest.mark.recipe
def test_audio_visual_end_to_end(corpus, av_run):
    root, digest = corpus
    run_dir, log = av_run
    assert tree_digest(root) == digest
    # fbank input: stage 1 computed the features of the sets training reads
    for name, utts in (("train", 36), ("dev_b", 24)):  # dev_b: cut by its segments
        assert len((run_dir / f"data/{name}/feats.scp").read_text().splitlines()) == utts
    assert (run_dir / "exp/speaker/validation.txt").read_text().count("\n") == 2  # on dev_b's fbank, each epoch
    assert not (run_dir / "data/test/feats.scp").exists()
    # the test set's faces aligned from its raw frames and landmarks; the others' frames.scp used as given
    frames = dict(line.split() for line in (run_dir / "data/test/frames.scp").read_text().splitlines())
    assert len(frames) == 24 and all(v.startswith(str(run_dir / "frame_align/test")) for v in frames.values())
    assert (run_dir / "data/train/frames.scp").read_bytes() == (root / "mine/train/frames.scp").read_bytes()
    assert (run_dir / "exp/face/avg_model.pt").exists()
    check_table(run_dir, "test", ("speaker_cosine", "speaker_asnorm", "speaker_calibrated", "face_cosine",
                                  "face_asnorm", "fusion_mean", "fusion_logreg"))
    fused = metrics(run_dir, "test", "fusion_logreg")
    assert fused["calibrated"] is True and math.isfinite(fused["cllr"])
    table = (run_dir / "exp/RESULTS.md").read_text()
    assert "| test | fusion: logistic regression (dev_b) | AS-Norm, calibrated |" in table
    assert "| test | face | AS-Norm |" in table


@pytest.mark.recipe
def test_fine_tuning_starts_from_the_init_model(audio_run, tmp_path):
    src_dir, _ = audio_run
    run_dir = copy_recipe(tmp_path / "ft")
    shutil.copytree(src_dir / "data", run_dir / "data", symlinks=True)
    init = src_dir / "exp/speaker/avg_model.pt"
    # a learning rate too small to move the weights: the fine-tuned encoder is the init model's
    proc = recipe(run_dir, "--train-set", "unused/train", "--test-sets", "unused/test", "--stage", 3,
                  "--stop-stage", 3, "--init-model", init,
                  "--speaker-opts", TINY_SPEAKER + " runtime.epochs=1 runtime.average_last=1 optim.lr=1e-9 "
                  "scheduler.final_lr=1e-10")
    assert proc.returncode == 0, proc.stdout
    assert f"Stage 3: train the speaker network (conf/ecapa_small.yaml, from {init})" in proc.stdout
    before = torch.load(init, map_location="cpu", weights_only=False)["model"]
    after = torch.load(run_dir / "exp/speaker/avg_model.pt", map_location="cpu", weights_only=False)["model"]
    weights = [k for k in before if k.startswith("encoder.") and not k.rsplit(".", 1)[1].startswith(
        ("running_", "num_batches"))]
    assert len(weights) > 50
    assert max((after[k] - before[k]).abs().max().item() for k in weights) < 1e-5
