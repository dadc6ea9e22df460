"""egs/voxceleb/run.sh end to end on a tiny VoxCeleb-shaped tree built from the synthetic corpus: the official
layout (VoxCeleb2 dev as real m4a and mp4 files written with PyAV, VoxCeleb1 wavs and a cleaned trial list),
every stage on a CPU (torchrun with one gloo process for training), then the --pretrained path with files in
the seed's checkpoint layouts, and the messages for missing inputs."""
import os
import shutil
import subprocess
import time

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from PIL import Image

from conftest import REPO, UTILS, avtk, run
from test_augment_corpora import corpora  # noqa: F401  (the MUSAN and RIRS_NOISES download layouts)

TINY_SPEECH = {
    "model": {"encoder": "ecapa_tdnn", "encoder_args": {"in_dim": 80, "channels": 32, "embed_dim": 16}},
    "optim": {"lr": 0.005},
    "data": {"input": "feats", "batch_size": 8, "crop_seconds": 1.0},
    "runtime": {"epochs": 2, "log_interval": 2, "average_last": 2, "device": "cpu"},
}
# large-margin fine-tuning of TINY_SPEECH (conf/tiny_speech_lm.yaml: run.sh --lm-conf auto finds it)
TINY_SPEECH_LM = {
    "model": TINY_SPEECH["model"],
    "loss": {"margin": 0.5},
    "optim": {"lr": 0.0005},
    "data": {"input": "feats", "batch_size": 8, "crop_seconds": 1.5},
    "augment": {"spec_augment": False},
    "finetune": {"classifier_init": "mean"},
    "runtime": {"epochs": 1, "log_interval": 2, "keep_last": 1, "average_last": 1, "device": "cpu"},
}
TINY_FACE = {
    "model": {"encoder": "iresnet18", "encoder_args": {"width": 4, "embed_dim": 16}},
    "data": {"batch_size": 8},
    "runtime": {"epochs": 2, "log_interval": 2, "average_last": 2, "device": "cpu"},
}
# the joint audio-visual embedding over TINY_SPEECH_LM and TINY_FACE (stage 11)
TINY_AV = {
    "model": {"encoder": "gated_fusion", "encoder_args": {"audio_dim": 16, "face_dim": 16, "hidden": 8}},
    "data": {"batch_size": 8},
    "runtime": {"epochs": 2, "log_interval": 2, "average_last": 2, "device": "cpu"},
}


def _video_frames(raw_dir, n):
    """25-fps frames showing raw frame k (named by 25-fps frame number 10k) around t = 0.4 k."""
    names = sorted(p for p in os.listdir(raw_dir) if p.endswith(".jpg"))
    images = [np.asarray(Image.open(os.path.join(raw_dir, name)).convert("RGB")) for name in names]
    return [images[min(max(int(round(j / 10)), 1), len(images)) - 1] for j in range(n)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """corpus -> vox2/dev/{aac,mp4}, vox1/{wav,frame_align}, lists/veri_test2.txt, and a copy of egs/voxceleb."""
    from avtk.io.media import write_audio, write_video

    root = tmp_path_factory.mktemp("vox")
    avtk("make-synthetic-corpus", "--num-train-speakers", 4, "--num-test-speakers", 3, "--videos-per-speaker", 2,
         "--utts-per-video", 3, "--min-duration", 1.6, "--max-duration", 2.4, root / "corpus", root / "cdata")
    corpus = root / "corpus"
    for line in (corpus / "train_all.txt").read_text().splitlines():
        _, rel, _ = line.split()
        stem = rel[:-4]
        wave, rate = sf.read(corpus / "wav" / rel, dtype="float32")
        write_audio(root / "vox2/dev/aac" / f"{stem}.m4a", wave, rate)
        write_video(root / "vox2/dev/mp4" / f"{stem}.mp4",
                    _video_frames(corpus / "frame_raw" / stem, int(len(wave) / rate * 25)), 25, wave, rate)
    for line in (corpus / "O_list.txt").read_text().splitlines():
        stem = line.split()[0][:-4]
        (root / "vox1/wav" / stem).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / "wav" / f"{stem}.wav", root / "vox1/wav" / f"{stem}.wav")
        shutil.copytree(corpus / "frame_align" / stem, root / "vox1/frame_align" / stem)
    (root / "lists").mkdir()
    shutil.copy(corpus / "O_trials.txt", root / "lists/veri_test2.txt")
    recipe = root / "recipe"
    shutil.copytree(REPO / "egs/voxceleb", recipe, symlinks=True,
                    ignore=shutil.ignore_patterns("data", "exp", "fbank", "frame_align"))
    (recipe / "utils").unlink()
    (recipe / "utils").symlink_to(UTILS)
    (recipe / "conf/tiny_speech.yaml").write_text(yaml.safe_dump(TINY_SPEECH))
    (recipe / "conf/tiny_speech_lm.yaml").write_text(yaml.safe_dump(TINY_SPEECH_LM))
    (recipe / "conf/tiny_face.yaml").write_text(yaml.safe_dump(TINY_FACE))
    (recipe / "conf/tiny_av.yaml").write_text(yaml.safe_dump(TINY_AV))
    return root


def recipe_run(tree, *args, check=True):
    return run(["./run.sh", "--layout", "official", "--vox2-dev", tree / "vox2/dev", "--vox1", tree / "vox1",
                "--trials-dir", tree / "lists", "--nj", 2, "--gpus", 1, "--top-n", 3,
                "--speaker-conf", "conf/tiny_speech.yaml", "--face-conf", "conf/tiny_face.yaml",
                "--av-conf", "conf/tiny_av.yaml", *args],
               cwd=tree / "recipe", check=check)


def test_missing_data_paths_stop_with_what_to_pass(tree, tmp_path):
    recipe = tree / "recipe"
    proc = run(["./run.sh", "--layout", "official", "--vox1", tree / "vox1"], cwd=recipe, check=False)
    assert proc.returncode == 1 and "stage 0 (official layout) needs --vox2-dev DIR" in proc.stderr
    proc = run(["./run.sh", "--stage", "3"], cwd=recipe, check=False)
    assert proc.returncode == 1 and "data/vox2_train/wav.scp is missing: run stage 0 first" in proc.stderr


@pytest.mark.recipe  # every stage end to end (about 2 minutes): with the mini recipe in CI's second step
def test_every_stage_on_the_official_layout(tree):
    proc = recipe_run(tree)
    recipe = tree / "recipe"
    data = recipe / "data"
    # stage 0: m4a audio, mp4 video, VoxCeleb1 wavs, the cleaned list as Kaldi trials
    wav_scp = (data / "vox2_dev/wav.scp").read_text().splitlines()
    assert len(wav_scp) == 4 * 2 * 3 and all(line.endswith(".m4a") for line in wav_scp)
    assert len((data / "vox2_dev/video.scp").read_text().splitlines()) == 24
    assert len((data / "vox1_O/trials").read_text().splitlines()) == len((tree / "lists/veri_test2.txt").read_text().splitlines())
    # stage 1 read the m4a files; stage 2 found faces in the mp4s with MTCNN and aligned them
    assert len((data / "vox2_dev/feats.scp").read_text().splitlines()) == 24
    frames = dict(line.split() for line in (data / "vox2_dev/frames.scp").read_text().splitlines())
    with_faces = [u for u, d in frames.items() if os.listdir(d)]
    assert len(with_faces) >= 20, "MTCNN found faces in too few synthetic videos"
    jpg = os.path.join(frames[with_faces[0]], sorted(os.listdir(frames[with_faces[0]]))[0])
    assert np.asarray(Image.open(jpg)).shape == (112, 112, 3)
    # stages 3-4 trained through torchrun; 5-8 embedded, scored, fused and tabulated
    for exp in ("speaker", "face"):
        assert (recipe / f"exp/{exp}/avg_model.pt").is_file() and (recipe / f"exp/{exp}/config.yaml").is_file()
    table = (recipe / "exp/RESULTS.md").read_text()
    for row in ("| vox1_O | speaker | cosine |", "| vox1_O | speaker | AS-Norm |", "| vox1_O | face | AS-Norm |",
                "| vox1_O | fusion: mean (a+v)/2 | cosine |", "| vox1_O | fusion: logreg (trained on this set) |",
                "| vox1_O | speaker_lm | cosine |", "| vox1_O | speaker_lm | AS-Norm |"):
        assert row in table, table
    # stage 3's large-margin fine-tuning started from stage 3's model; stage 5 embedded the training set with it
    assert "Stage 3: large-margin fine-tuning of the speaker network (conf/tiny_speech_lm.yaml)" in proc.stderr
    lm = yaml.safe_load((recipe / "exp/speaker_lm/config.yaml").read_text())
    assert lm["finetune"]["init_model"] == "exp/speaker/avg_model.pt" and lm["loss"]["margin"] == 0.5
    assert len((recipe / "exp/speaker_lm/emb/vox2_dev.scp").read_text().splitlines()) == 24
    # stage 9 wrote the seed's clean list and a cleaned data dir; stage 10 retrained on it
    lines = (recipe / "exp/cleanse/train_all_clean.txt").read_text().splitlines()
    assert len(lines) == 24 and all(line.split()[5] in ("clean", "noisy") for line in lines)
    run(["utils/validate_data_dir.sh", "--no-feats", "data/vox2_dev_clean"], cwd=recipe)
    assert "Retraining (stage 10), vox1_O: speaker EER" in table
    assert (recipe / "exp/speaker_clean/avg_model.pt").is_file()
    # stage 11: the joint audio-visual embedding, trained on crops of the LM network's embeddings
    assert "Joint audio-visual embedding (stage 11, conf/tiny_av.yaml over speaker_lm and face)" in table
    assert "| vox1_O | joint audio-visual | cosine |" in table and "| vox1_O | joint audio-visual | AS-Norm |" in table
    crops = kaldiio.load_scp(str(recipe / "exp/av_joint/data/train/audio_emb.scp"))
    assert len(crops) == 24 and {v.shape for v in crops.values()} == {(5, 16)}
    no_face = [u for u, d in frames.items() if not os.listdir(d)]
    joint = kaldiio.load_scp(str(recipe / "exp/av_joint/emb/vox2_dev.scp"))
    assert len(joint) == 24 and sorted(u for u, e in joint.items() if not e[16:].any()) == sorted(no_face)

    # --pretrained: the seed's A-Vox2.model and V-Vox2.model, imported and evaluated without training
    from test_import_model import ecapa_layout, iresnet_layout

    pre = tree / "pretrained"
    pre.mkdir()
    torch.save(ecapa_layout(1024, 3, perturb_frontend=False), pre / "A-Vox2.model")
    state = iresnet_layout("iresnet18", 4)
    state["weight"] = torch.randn(5994, 512)
    torch.save(state, pre / "V-Vox2.model")
    proc = recipe_run(tree, "--pretrained", pre, "--stage", 3, "--stop-stage", 10)
    assert "Stage 10: skipped with --pretrained" in proc.stderr
    model = torch.load(recipe / "exp/speaker/avg_model.pt", map_location="cpu", weights_only=False)
    assert model["config"]["model"]["frontend"] == "seed" and model["config"]["source"]["format"] == "a-vox2"
    face = torch.load(recipe / "exp/face/avg_model.pt", map_location="cpu", weights_only=False)
    assert face["config"]["model"]["channels"] == "bgr"
    assert "| vox1_O | speaker | AS-Norm |" in (recipe / "exp/RESULTS.md").read_text()


def test_seed_layout_data_and_frames_stages(tree, tmp_path):
    """The seed's tree (the synthetic corpus is one: wav/, frame_align/, train_all.txt, O_list/O_trials):
    stage 0 prepares it, stage 1 computes fbank, stage 2 keeps its aligned frames as they are."""
    recipe = tmp_path / "recipe"
    shutil.copytree(tree / "recipe", recipe, symlinks=True, ignore=shutil.ignore_patterns("data", "exp", "fbank",
                                                                                          "frame_align"))
    corpus = tree / "corpus"
    proc = run(["./run.sh", "--layout", "seed", "--vox2", corpus, "--vox1", corpus, "--nj", 2, "--stop-stage", 2],
               cwd=recipe)
    assert "data/vox2_train/frames.scp lists aligned frames already" in proc.stderr
    frames = dict(line.split() for line in (recipe / "data/vox2_train/frames.scp").read_text().splitlines())
    assert len(frames) == 24 and all(d.startswith(str(corpus / "frame_align")) for d in frames.values())
    assert len((recipe / "data/vox1_O/feats.scp").read_text().splitlines()) == 3 * 2 * 3
    trials = (recipe / "data/vox1_O/trials").read_text()
    assert trials == (tree / "cdata/test/trials").read_text()


SHRUNK = {("model", "encoder_args"): {"in_dim": 80, "channels": 32, "embed_dim": 16}, ("data", "batch_size"): 8,
          ("data", "num_workers"): 2, ("runtime", "epochs"): 1}


def test_stage_3_trains_the_real_ecapa_l_config_with_musan_rirs_and_speed_perturbation(tree, corpora):
    """Stage 0 with --musan/--rirs on the download layouts (test_augment_corpora's trees), then stage 3 with
    egs/voxceleb/conf/ecapa_l.yaml changed only in size: wav input, the four augmentation dirs, speed
    perturbation; the classes are the speakers at the three speeds."""
    recipe = corpora / "recipe"
    shutil.copytree(tree / "recipe", recipe, symlinks=True, ignore=shutil.ignore_patterns("data", "exp", "fbank",
                                                                                          "frame_align"))
    conf = yaml.safe_load((REPO / "egs/voxceleb/conf/ecapa_l.yaml").read_text())
    for (section, key), value in SHRUNK.items():
        conf[section][key] = value
    (recipe / "conf/ecapa_l_shrunk.yaml").write_text(yaml.safe_dump(conf))
    run(["./run.sh", "--layout", "official", "--vox2-dev", tree / "vox2/dev", "--vox1", tree / "vox1",
         "--trials-dir", tree / "lists", "--musan", corpora / "musan", "--rirs", corpora / "RIRS_NOISES",
         "--stop-stage", 0], cwd=recipe)
    for name in ("musan_noise", "musan_music", "musan_speech", "rirs"):
        assert (recipe / "data" / name / "wav.scp").read_text()
    proc = run(["./run.sh", "--layout", "official", "--stage", 3, "--stop-stage", 3, "--gpus", 0,
                "--speaker-conf", "conf/ecapa_l_shrunk.yaml"], cwd=recipe)
    assert "Stage 3: train the speaker network (conf/ecapa_l_shrunk.yaml" in proc.stderr
    from avtk.train.config import flatten, load_config

    used = flatten(yaml.safe_load((recipe / "exp/speaker/config.yaml").read_text()))
    real = flatten(load_config(REPO / "egs/voxceleb/conf/ecapa_l.yaml"))
    assert {k for k in real if used[k] != real[k]} == {".".join(k) for k in SHRUNK}
    assert used["augment.wave"] and used["augment.speed_perturb"] == [1.0, 0.9, 1.1]
    assert used["augment.noise_dir"] == "data/musan_noise" and used["data.input"] == "wav"
    model = torch.load(recipe / "exp/speaker/avg_model.pt", map_location="cpu", weights_only=False)
    speakers = sorted({line.split()[1] for line in (recipe / "data/vox2_dev/utt2spk").read_text().splitlines()})
    assert model["speakers"] == speakers + [f"sp{s}-{spk}" for s in ("0.9", "1.1") for spk in speakers]
    assert (recipe / "exp/speaker/validation.txt").read_text().startswith("1 ")


# ---- several nodes: node 0 runs the data stages, the others wait for its markers (stubbed torchrun) ----------

FAKE_TORCHRUN = """#!/usr/bin/env bash
# Fake torchrun: records its arguments and what exp/sync/ holds, then exits with $FAKE_TORCHRUN_RC.
echo "$*" >> "$(dirname "$0")/torchrun.args"
ls exp/sync >> "$(dirname "$0")/torchrun.sync" 2>/dev/null || echo "no exp/sync" >> "$(dirname "$0")/torchrun.sync"
exit "${FAKE_TORCHRUN_RC:-0}"
"""


@pytest.fixture
def nodes(tmp_path):
    """(a copy of egs/voxceleb without data, a bin dir with the fake torchrun)."""
    recipe = tmp_path / "recipe"
    shutil.copytree(REPO / "egs/voxceleb", recipe, symlinks=True,
                    ignore=shutil.ignore_patterns("data", "exp", "fbank", "frame_align"))
    (recipe / "utils").unlink()
    (recipe / "utils").symlink_to(UTILS)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "torchrun").write_text(FAKE_TORCHRUN)
    (stubs / "torchrun").chmod(0o755)
    return recipe, stubs


NODE_ARGS = ["--layout", "official", "--nnodes", 2, "--gpus", 1, "--sync-poll", 0.1]


def start_node(recipe, stubs, rank, *args):
    from conftest import _env

    err = open(recipe.parent / f"node{rank}.err", "w")
    return subprocess.Popen([str(a) for a in ["./run.sh", *NODE_ARGS, "--node-rank", rank, *args]], cwd=recipe,
                            env=_env(stubs), stdout=subprocess.DEVNULL, stderr=err, text=True)


def wait_until(condition, seconds=30):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def tree_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "utils" not in p.parts)


def test_node_1_waits_for_node_0_and_writes_no_shared_file(nodes):
    recipe, stubs = nodes
    before = tree_files(recipe)
    proc = start_node(recipe, stubs, 1, "--stop-stage", 4, "--sync-timeout", 60)
    err = recipe.parent / "node1.err"
    wait_until(lambda: "Stage 2: node 0 runs it (this is node 1)" in err.read_text())
    time.sleep(0.5)
    assert proc.poll() is None and not (stubs / "torchrun.args").exists()  # waiting for node 0's stage 0
    assert tree_files(recipe) == before
    # node 0 (simulated) finishes stages 0-2: its files and markers appear on the shared file system
    shared = ["data/vox2_dev/wav.scp", "data/vox2_dev/frames.scp", "exp/sync/stage.0.done",
              "exp/sync/stage.1.done", "exp/sync/stage.2.done"]
    for name in shared:
        (recipe / name).parent.mkdir(parents=True, exist_ok=True)
        (recipe / name).write_text("")
    wait_until(lambda: (stubs / "torchrun.args").exists())  # stage 3 trains together with node 0
    time.sleep(0.5)
    assert proc.poll() is None  # stage 4 waits for node 0's end of stage 3
    (recipe / "exp/sync/stage.3.done").write_text("")
    assert proc.wait(timeout=30) == 0, err.read_text()
    calls = (stubs / "torchrun.args").read_text().splitlines()
    assert len(calls) == 3 and all("--nnodes 2 --node_rank 1 " in c for c in calls)
    # stage 3: the speaker network, then its large-margin fine-tuning (conf/ecapa_l_lm.yaml); stage 4: faces
    assert "--exp exp/speaker " in calls[0] and "--exp exp/face " in calls[2]
    assert "--config conf/ecapa_l_lm.yaml --init-model exp/speaker/avg_model.pt" in calls[1]
    assert "--exp exp/speaker_lm " in calls[1]
    assert tree_files(recipe) == sorted(set(before) | set(shared) | {"data", "data/vox2_dev", "exp", "exp/sync",
                                                                     "exp/sync/stage.3.done"})
    assert "done (node 1 of 2)" in err.read_text()


def test_node_1_gives_up_after_the_sync_timeout(nodes):
    recipe, stubs = nodes
    proc = start_node(recipe, stubs, 1, "--stop-stage", 3, "--sync-timeout", 0.3)
    assert proc.wait(timeout=30) == 1
    err = (recipe.parent / "node1.err").read_text()
    assert ("ERROR: node 1: waited 0.3s for exp/sync/stage.0.done (node 0's stage 0) before stage 3; is node 0 "
            "running this script with the same exp/ on a shared file system?") in err
    assert "Traceback" not in err and not (stubs / "torchrun.args").exists()


def test_node_1_stops_when_node_0_fails(nodes):
    recipe, stubs = nodes
    proc = start_node(recipe, stubs, 1, "--stop-stage", 3, "--sync-timeout", 60)
    err = recipe.parent / "node1.err"
    wait_until(lambda: "Stage 2: node 0 runs it" in err.read_text())
    (recipe / "exp/sync").mkdir(parents=True)
    (recipe / "exp/sync/failed").write_text("exit 1 at now\n")
    assert proc.wait(timeout=30) == 1
    assert "ERROR: node 1: node 0 failed (exp/sync/failed: exit 1 at now); see node 0's output" in err.read_text()


def test_node_0_clears_stale_markers_marks_its_stages_and_reports_failure(nodes, monkeypatch):
    recipe, stubs = nodes
    (recipe / "data/vox2_dev").mkdir(parents=True)
    (recipe / "data/vox2_dev/wav.scp").write_text("")
    (recipe / "exp/sync").mkdir(parents=True)
    (recipe / "exp/sync/stage.0.done").write_text("")  # a killed run's
    proc = start_node(recipe, stubs, 0, "--stage", 3, "--stop-stage", 3)
    assert proc.wait(timeout=30) == 0, (recipe.parent / "node0.err").read_text()
    assert (stubs / "torchrun.sync").read_text() == ""  # exp/sync/ cleared before the training
    assert "--nnodes 2 --node_rank 0 " in (stubs / "torchrun.args").read_text()
    assert not (recipe / "exp/sync").exists()  # removed at the end
    monkeypatch.setenv("FAKE_TORCHRUN_RC", "3")
    proc = start_node(recipe, stubs, 0, "--stage", 3, "--stop-stage", 3)
    assert proc.wait(timeout=30) != 0
    assert (recipe / "exp/sync/failed").read_text().startswith("exit 3 at ")


@pytest.mark.parametrize("device, opts", [("cuda", "--gpu 1 "), ("cpu", ""), ("cuda:1", "")])
def test_extraction_jobs_get_a_gpu_each_with_device_cuda(nodes, device, opts):
    recipe, stubs = nodes
    (stubs / "fakecmd").write_text('#!/usr/bin/env bash\necho "$*" > "$(dirname "$0")/cmd.args"\nexit 1\n')
    (stubs / "fakecmd").chmod(0o755)
    (recipe / "data/vox2_dev").mkdir(parents=True)
    (recipe / "data/vox2_dev/wav.scp").write_text("u1 a.wav\nu2 b.wav\n")
    proc = run(["./run.sh", "--layout", "official", "--stage", 1, "--stop-stage", 1, "--nj", 2, "--device", device,
                "--cmd", "fakecmd"], cwd=recipe, extra_path=stubs, check=False)
    assert proc.returncode == 1
    args = (stubs / "cmd.args").read_text()
    assert args.startswith(f"{opts}JOB=1:2 exp/log/fbank_vox2_dev.JOB.log avtk compute-fbank --device {device} "), args
