"""egs/mini/run.sh as users run it, every stage: a valid corpus whose trivial baselines are not trivial,
fbank that matches kaldi-native-fbank on every frame, and an ECAPA that beats the baseline by a clear margin."""
import re
import shutil

import kaldiio
import pytest
import soundfile as sf

from conftest import REPO, UTILS, run


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """A copy of egs/mini (the recipe writes corpus/, data/ and exp/ beside run.sh)."""
    root = tmp_path_factory.mktemp("mini")
    dest = root / "mini"
    shutil.copytree(REPO / "egs" / "mini", dest, symlinks=True, ignore=shutil.ignore_patterns("corpus", "data", "exp"))
    (dest / "utils").unlink()
    (dest / "utils").symlink_to(UTILS)
    return dest


def test_help_lists_stages_and_options(recipe):
    out = run(["./run.sh", "--help"], cwd=recipe).stdout
    assert "Stages:" in out and "--stage" in out and "--nj" in out


def test_unknown_option_fails(recipe):
    proc = run(["./run.sh", "--no-such-option", "1"], cwd=recipe, check=False)
    assert proc.returncode != 0 and "no-such-option" in proc.stderr


@pytest.fixture(scope="module")
def ran(recipe):
    return run(["./run.sh"], cwd=recipe)


def eer_of(path):
    return float(re.search(r"EER ([\d.]+) %", path.read_text()).group(1))


def test_stage0_default_mini_corpus(recipe, ran):
    for x in ("train", "test"):
        run(["utils/validate_data_dir.sh", "--no-feats", f"data/{x}"], cwd=recipe)
    assert len((recipe / "data/train/utt2spk").read_text().splitlines()) == 40 * 3 * 4
    assert len((recipe / "data/train/label_noise.txt").read_text().splitlines()) == 24
    for modality in ("audio", "face"):
        eer = eer_of(recipe / f"exp/baseline/metrics_{modality}.txt")
        assert 5.0 < eer < 35.0, f"{modality} baseline EER {eer}% outside 5-35%"
        # kaldiio reads the embeddings avtk wrote.
        emb = kaldiio.load_scp(str(recipe / f"exp/baseline/{modality}_test.scp"))
        assert len(emb) == 20 * 3 * 4


def test_stage1_fbank_matches_kaldi_native_fbank_on_every_frame(recipe, ran):
    from test_fbank import _assert_matches_kaldi, _knf_fbank

    for x in ("train", "test"):
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
    ecapa = eer_of(recipe / "exp/ecapa/scores/metrics_cosine.txt")
    assert ecapa < 0.75 * baseline, f"ECAPA EER {ecapa}% vs mean-MFCC baseline {baseline}%"
    config = (recipe / "exp/ecapa/config.yaml").read_text()
    assert "channels: 256" in config
    emb = kaldiio.load_scp(str(recipe / "exp/ecapa/emb/test.scp"))
    assert len(emb) == 20 * 3 * 4 and next(iter(emb.values())).shape == (192,)
