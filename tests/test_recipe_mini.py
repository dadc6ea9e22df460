"""egs/mini/run.sh as users run it, every stage: a valid corpus whose trivial baselines are not trivial,
fbank that matches kaldi-native-fbank on every frame, aligned face frames, an ECAPA and an iresnet that beat
their baselines by a clear margin, fusion that beats both modalities, cleansing that finds the injected label
noise, and the retraining on the cleaned list.

Marked `recipe` (about 12 minutes on 2 cores): run with `python -m pytest -q -m recipe tests`."""
import re
import shutil
import sys

import kaldiio
import pytest
import soundfile as sf

from conftest import REPO, UTILS, run

pytestmark = pytest.mark.recipe


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """A copy of egs/mini (the recipe writes corpus/, data/ and exp/ beside run.sh)."""
    root = tmp_path_factory.mktemp("mini")
    dest = root / "mini"
    shutil.copytree(REPO / "egs" / "mini", dest, symlinks=True, ignore=shutil.ignore_patterns("corpus", "data", "exp", "fbank", "frame_align"))
    (dest / "utils").unlink()
    (dest / "utils").symlink_to(UTILS)
    return dest


def test_help_lists_stages_and_options(recipe):
    out = run(["./run.sh", "--help"], cwd=recipe).stdout
    assert "Stages:" in out and "--stage" in out and "--nj" in out


def test_unknown_option_fails(recipe):
    proc = run(["./run.sh", "--no-such-option", "1"], cwd=recipe, check=False)
    assert proc.returncode != 0 and "no-such-option" in proc.stderr


def test_bad_option_values_fail_before_any_stage(recipe):
    proc = run(["./run.sh", "--speaker-nets", "ecapa,xvector"], cwd=recipe, check=False)
    assert proc.returncode == 1 and "--speaker-nets: unknown network 'xvector' (known: ecapa, campplus, resnet221, resnet293, eres2netv2)" in proc.stderr
    for nets, message in (("-n", "unknown network '-n'"), ("*", "unknown network '*'"),
                          ("campplus,ecapa,campplus", "'campplus' is named twice")):
        proc = run(["./run.sh", "--speaker-nets", nets], cwd=recipe, check=False)
        assert proc.returncode == 1 and f"--speaker-nets: {message}" in proc.stderr, proc.stderr
    for value in ("101", "-1", "99999999999999999999", "1.5", ""):
        proc = run(["./run.sh", "--faceless", value], cwd=recipe, check=False)
        # parse_options.sh refuses what is not an integer, run.sh what is not a percentage
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and proc.stderr.strip().endswith(
            (f"--faceless must be a percentage 0-100, not '{value}'", f"--faceless takes an integer, not '{value}'")), \
            proc.stderr
    assert not (recipe / "corpus").exists()


@pytest.fixture(scope="module")
def ran(recipe):
    return run(["./run.sh"], cwd=recipe)


def eer_of(path):
    return float(re.search(r"EER ([\d.]+) %", path.read_text()).group(1))


def results(recipe):
    """{(system, scoring): EER %} from exp/RESULTS.md's metrics table (the identification table follows it)."""
    table = (recipe / "exp/RESULTS.md").read_text().split("\nIdentification")[0]
    return {tuple(c.strip() for c in line.split("|")[1:3]): float(line.split("|")[3])
            for line in table.splitlines() if line.startswith("| ") and not line.startswith("| system")}


def test_stage0_default_mini_corpus(recipe, ran):
    for x in ("train", "test", "dev", "train_clean"):
        run(["utils/validate_data_dir.sh", "--no-feats", f"data/{x}"], cwd=recipe)
    assert len((recipe / "data/train/utt2spk").read_text().splitlines()) == 40 * 3 * 4
    assert len((recipe / "data/dev/utt2spk").read_text().splitlines()) == 10 * 3 * 4
    assert len((recipe / "data/train/label_noise.txt").read_text().splitlines()) == 24
    for modality in ("audio", "face"):
        eer = eer_of(recipe / f"exp/baseline/metrics_{modality}.txt")
        assert 5.0 < eer < 35.0, f"{modality} baseline EER {eer}% outside 5-35%"
        # kaldiio reads the embeddings avtk wrote.
        emb = kaldiio.load_scp(str(recipe / f"exp/baseline/{modality}_test.scp"))
        assert len(emb) == 20 * 3 * 4


def test_stage1_fbank_matches_kaldi_native_fbank_on_every_frame(recipe, ran):
    from test_fbank import _assert_matches_kaldi, _knf_fbank

    for x in ("train", "test", "dev"):
        feats = kaldiio.load_scp(str(recipe / f"data/{x}/feats.scp"))
        wavs = dict(line.split(maxsplit=1) for line in (recipe / f"data/{x}/wav.scp").read_text().splitlines())
        num_frames = dict(line.split() for line in (recipe / f"data/{x}/utt2num_frames").read_text().splitlines())
        assert sorted(feats) == sorted(wavs) == sorted(num_frames)
        for utt in feats:
            wave, _ = sf.read(wavs[utt], dtype="float32")
            ours = feats[utt]
            assert ours.shape[0] == int(num_frames[utt])
            _assert_matches_kaldi(utt, ours, _knf_fbank(wave))


def test_ecapa_beats_the_baseline_by_a_clear_margin(recipe, ran):
    baseline = eer_of(recipe / "exp/baseline/metrics_audio.txt")
    assert results(recipe)[("audio: mean MFCC (trivial)", "cosine")] == baseline
    ecapa = results(recipe)[("audio: ECAPA-TDNN C=256", "cosine")]
    assert ecapa < 0.75 * baseline, f"ECAPA EER {ecapa}% vs mean-MFCC baseline {baseline}%"
    config = (recipe / "exp/ecapa/config.yaml").read_text()
    assert "channels: 256" in config
    emb = kaldiio.load_scp(str(recipe / "exp/ecapa/emb/test.scp"))
    assert len(emb) == 20 * 3 * 4 and next(iter(emb.values())).shape == (192,)


def test_stage3_large_margin_fine_tuning_starts_from_the_trained_network_and_has_its_rows(recipe, ran):
    import hashlib

    import yaml

    cfg = yaml.safe_load((recipe / "exp/ecapa_lm/config.yaml").read_text())
    base = yaml.safe_load((recipe / "exp/ecapa/config.yaml").read_text())
    assert cfg["finetune"]["init_model"] == "exp/ecapa/avg_model.pt" and cfg["loss"]["margin"] == 0.5
    digest = hashlib.sha256((recipe / "exp/ecapa/avg_model.pt").read_bytes()).hexdigest()
    assert cfg["finetune"]["init_checksum"] == digest and cfg["data"]["crop_seconds"] > base["data"]["crop_seconds"]
    rows, baseline = results(recipe), eer_of(recipe / "exp/baseline/metrics_audio.txt")
    # before and after, side by side; the calibration and the fusion use the fine-tuned network
    for scoring in ("cosine", "AS-Norm"):
        assert rows[("audio: ECAPA-TDNN C=256 + LM", scoring)] < 0.75 * baseline
    assert ("audio: ECAPA-TDNN C=256 + LM", "AS-Norm, calibrated on dev") in rows
    assert len(kaldiio.load_scp(str(recipe / "exp/ecapa_lm/emb/train.scp"))) == 480


def test_stage2_face_frames_are_aligned_from_the_raw_frames(recipe, ran):
    for x in ("train", "test", "dev"):
        frames = dict(line.split() for line in (recipe / f"data/{x}/frames.scp").read_text().splitlines())
        raw = dict(line.split() for line in (recipe / f"data/{x}/raw_frames.scp").read_text().splitlines())
        assert sorted(frames) == sorted(raw)
        utt = sorted(frames)[0]
        assert frames[utt] == str(recipe / "frame_align" / x / utt)
        names = sorted(p.name for p in (recipe / "frame_align" / x / utt).iterdir())
        assert names and names == sorted(p.name for p in (recipe / "corpus/frame_raw").glob(f"*/*/*/{names[0]}"))[:0] + names


def test_iresnet_beats_the_pixel_baseline_by_a_clear_margin(recipe, ran):
    baseline = eer_of(recipe / "exp/baseline/metrics_face.txt")
    assert results(recipe)[("face: 16x16 pixels (trivial)", "cosine")] == baseline
    face = results(recipe)[("face: iresnet18 w=8", "cosine")]
    assert face < 0.6 * baseline, f"iresnet EER {face}% vs pixel baseline {baseline}%"
    emb = kaldiio.load_scp(str(recipe / "exp/iresnet/emb/test.scp"))
    assert len(emb) == 20 * 3 * 4 and next(iter(emb.values())).shape == (128,)
    assert (recipe / "exp/iresnet/emb/test.no_face").read_text() == ""


def test_fusion_beats_both_modalities_and_results_table(recipe, ran):
    rows = results(recipe)
    table = (recipe / "exp/RESULTS.md").read_text()
    fused = rows[("fusion: logistic regression (dev)", "AS-Norm, calibrated")]
    assert fused < min(rows[("audio: ECAPA-TDNN C=256", "AS-Norm")], rows[("face: iresnet18 w=8", "AS-Norm")])
    assert rows[("fusion: seed mean (a+v)/2", "cosine")] < min(rows[("audio: ECAPA-TDNN C=256", "cosine")],
                                                               rows[("face: iresnet18 w=8", "cosine")])
    assert "Cllr" in table and "Cleansing:" in table and "Retraining (stage 10)" in table


def test_qmf_rows_and_identification_table(recipe, ran):
    """Stage 7's QMF calibrations are in the table with a Cllr; stage 11 identifies mini's test speakers: the
    fused systems' closed-set top-1 is high and each row counts the same probes, 60 of them impostors."""
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[3:]
            for line in (recipe / "exp/RESULTS.md").read_text().split("\nIdentification")[0].splitlines()
            if line.startswith("| ")}
    for system in [k for k in rows if k[1].endswith("QMF") or k[1].endswith("QMF on dev")]:
        assert 0 < float(rows[system][4]) < 1.0, (system, rows[system])  # Cllr of a useful calibration
    assert len([k for k in rows if "QMF" in k[1]]) == 2
    ident = (recipe / "exp/RESULTS.md").read_text().split("\nIdentification (stage 11)")[1].split("\nJoint audio-visual")[0]
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in ident.splitlines() if line.startswith("| ") and not line.startswith("| system")}
    assert len(table) == 5 and {v[0] for v in table.values()} == {"210 (60)"}, table
    fused = table["fusion: seed mean (a+v)/2"]
    assert float(fused[1]) >= 90.0 and float(fused[2]) >= float(fused[1]), fused
    assert (recipe / "exp/identify/audio.spk2utt").read_text().count("\n") == 15


def test_cleansing_finds_the_injected_label_noise(recipe, ran):
    import json

    report = json.loads((recipe / "exp/cleanse/report.json").read_text())
    assert report["truth"]["mislabelled"] == 24
    assert report["truth"]["precision"] >= 0.9 and report["truth"]["recall"] >= 0.9, report["truth"]
    lines = (recipe / "exp/cleanse/train_all_clean.txt").read_text().splitlines()
    assert len(lines) == 480 and all(line.split()[5] in ("clean", "noisy") for line in lines)
    assert (recipe / "exp/cleanse/similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stage10_retrains_on_the_cleaned_list(recipe, ran):
    kept = len((recipe / "data/train_clean/utt2spk").read_text().splitlines())
    assert 480 - 30 <= kept < 480
    line = [x for x in (recipe / "exp/RESULTS.md").read_text().splitlines() if x.startswith("Retraining (stage 10)")]
    assert len(line) == 1 and f"cleaned list ({kept} utts)" in line[0]
    assert (recipe / "exp/ecapa_clean/avg_model.pt").is_file()
    assert len(kaldiio.load_scp(str(recipe / "exp/ecapa_clean/emb/test.scp"))) == 20 * 3 * 4


def test_stage12_joint_embedding_beats_each_modality_and_embeds_utterances_without_faces(recipe, ran):
    text = (recipe / "exp/RESULTS.md").read_text().split("\nJoint audio-visual embedding (stage 12)")[1]
    assert "(72 utterances," in text.splitlines()[0]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [float(c) for c in line.split("|")[3:7]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| system")}
    assert len(rows) == 6, rows
    audio = rows[("audio: ECAPA-TDNN C=256 + LM", "cosine")]
    face = rows[("face: iresnet18 w=8 (trials with both faces)", "cosine")]
    joint = rows[("joint audio-visual embedding", "cosine")]
    assert audio[0] == audio[2]  # the audio scores do not change
    # all faces: far better than either modality; 30 % faceless: still better than audio alone
    assert joint[0] < 0.6 * min(audio[0], face[0]), rows
    assert joint[2] < audio[2], rows
    gone = set((recipe / "exp/av_joint/faceless/face.no_face").read_text().split()[::2])
    assert len(gone) == 72
    emb = kaldiio.load_scp(str(recipe / "exp/av_joint/emb/joint_test_faceless.scp"))
    assert len(emb) == 240
    assert {u for u, e in emb.items() if not e[192:].any()} == gone
    assert (recipe / "exp/av_joint/emb/joint_test_faceless.no_face").read_text().split()[::2] == sorted(gone)
    # bench/joint_embedding.py reads this run: its untrained gated network is the mean fusion exactly
    out = run([sys.executable, REPO / "bench/joint_embedding.py", recipe, "--seeds", "1"], cwd=REPO).stdout
    mean = re.search(r"seed mean fusion \(audio alone if no face\)\s+([\d.]+)", out).group(1)
    assert re.search(r"gated, untrained \(equal weights\)\s+" + re.escape(mean), out), out
    assert "gated, trained on crops" in out and "projected, trained on whole utterances" in out


def test_stage6_resumes_from_files_on_disk(recipe, ran):
    before = (recipe / "exp/RESULTS.md").read_text().split("\nCleansing")[0]
    proc = run(["./run.sh", "--stage", "6", "--stop-stage", "8"], cwd=recipe)
    assert "Stage 5" not in proc.stderr and "Stage 6" in proc.stderr
    assert (recipe / "exp/RESULTS.md").read_text().split("\nCleansing")[0] == before


def test_stage12_fine_tunes_both_networks_through_the_joint_one_by_option(recipe, ran):
    """--av-finetune-conf (here 1 epoch that trains the networks, to keep the test short): two more rows, the
    fine-tuned networks' own model files embed the sets again."""
    conf = (recipe / "conf/av_finetune_mini.yaml").read_text()
    short = conf.replace("freeze_encoder_epochs: 1", "freeze_encoder_epochs: 0").replace("epochs: 4", "epochs: 1")
    assert short.count("epochs: 0") == 1 and short.count("epochs: 1") == 1
    (recipe / "conf/av_finetune_test.yaml").write_text(short)
    proc = run(["./run.sh", "--stage", "12", "--av-finetune-conf", "conf/av_finetune_test.yaml"], cwd=recipe)
    assert "training gated_fusion on 480 utterances of 40 speakers, epochs 1-1" in proc.stderr
    text = (recipe / "exp/RESULTS.md").read_text().split("\nJoint audio-visual embedding (stage 12)")[-1]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [float(c) for c in line.split("|")[3:7]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| system")}
    assert len(rows) == 8, rows
    tuned = rows[("joint, networks fine-tuned through it (conf/av_finetune_test.yaml)", "cosine")]
    audio = rows[("audio: ECAPA-TDNN C=256 + LM", "cosine")]
    assert tuned[0] < audio[0] and tuned[2] < audio[2], rows  # still an audio-visual system
    ft = recipe / "exp/av_finetune"
    for name in ("speaker_model.pt", "face_model.pt", "audio/test.scp", "face/faceless.no_face",
                 "emb/joint_test_faceless.scp", "scores/all_joint_asnorm.txt"):
        assert (ft / name).is_file(), name
    gone = set((recipe / "exp/av_joint/faceless/face.no_face").read_text().split()[::2])
    assert set((ft / "face/faceless.no_face").read_text().split()[::2]) == gone
