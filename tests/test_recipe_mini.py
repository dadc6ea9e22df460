"""egs/mini/run.sh as users run it: stage 0 builds a valid corpus whose trivial baselines are not trivial."""
import re
import shutil

import kaldiio
import pytest

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


def test_stage0_default_mini_corpus(recipe):
    run(["./run.sh", "--stop-stage", "0"], cwd=recipe)
    for x in ("train", "test"):
        run(["utils/validate_data_dir.sh", "--no-feats", f"data/{x}"], cwd=recipe)
    assert len((recipe / "data/train/utt2spk").read_text().splitlines()) == 40 * 3 * 4
    assert len((recipe / "data/train/label_noise.txt").read_text().splitlines()) == 24
    for modality in ("audio", "face"):
        text = (recipe / f"exp/baseline/metrics_{modality}.txt").read_text()
        eer = float(re.search(r"EER ([\d.]+) %", text).group(1))
        assert 5.0 < eer < 35.0, f"{modality} baseline EER {eer}% outside 5-35%"
        # kaldiio reads the embeddings avtk wrote.
        emb = kaldiio.load_scp(str(recipe / f"exp/baseline/{modality}_test.scp"))
        assert len(emb) == 20 * 3 * 4
