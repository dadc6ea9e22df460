"""Every bench/ script runs with its one command (here in its smoke size) and prints its peer-vs-avtk ratios;
the figures themselves come from the full runs listed in the README."""
import re
import sys

import pytest

from conftest import REPO, run

RATIO = r"(\d+\.\d+)x"
SMOKE = {  # script: (arguments, a line every table prints, its ratios)
    "fbank.py": (["--quick"], r"Parity ok at 0\.001", RATIO),
    "extract.py": (["--quick", "--no-recipe"], r"fused encoder vs eager, one at a time\s+\S+ ok at 0\.0001", RATIO),
    "face_extract.py": (["--quick"], r"\(ok at 0\.0001\)", RATIO),
    # its ratio: the DataLoader workers per GPU (consumer rate / one worker's rate)
    "train_input.py": (["--quick"], r"workers per GPU to keep up", r"H100, bf16 \(estimate\): 1500 samples/s\s+(\d+)"),
    # its ratios: growth of each step's time over growth of the data (about 1: linear)
    "scale.py": (["--quick"], r"growth: CPU time ratio / size ratio", RATIO),
    "audio_decode.py": (["--num-files", "6", "--seconds", "2"], r"conversion pays for itself", RATIO),
    "vox1o.py": (["--quick", "--channels", "128", "--threads", "2"], r"vs peer: max \|difference\| \S+ \(ok at 0\.0001\)",
                 RATIO),
}


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_bench_script_prints_its_ratios(script):
    args, marker, ratio = SMOKE[script]
    out = run([sys.executable, REPO / "bench" / script, *args], cwd=REPO).stdout
    assert re.search(marker, out), out
    ratios = [float(r) for r in re.findall(ratio, out)]
    assert ratios and all(r > 0 for r in ratios), out


def test_every_bench_script_is_smoke_tested_or_named():
    scripts = {p.name for p in (REPO / "bench").glob("*.py")} - {"timing.py"}
    # score.py has one fixed Vox1-E size (about 30 s); finetune.py trains 5 networks even with --quick (about 70 CPU
    # seconds; its parts are tested in test_finetune.py): README only; joint_embedding.py reads a finished egs/mini
    # run: test_recipe_mini runs it on the recipe's outputs
    assert scripts - set(SMOKE) == {"score.py", "finetune.py", "joint_embedding.py"}
