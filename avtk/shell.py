"""Where avtk's Kaldi-style shell helpers are: the top-level `utils/` of the source tree (parse_options.sh, run.pl,
slurm.pl, split_scp, validate_data_dir.sh, ...), which a recipe's path.sh puts on PATH through `avtk utils-dir`.

A normal install (`pip install .`) carries a copy inside the package, `avtk/utils/` (setup.py's build_py adds it);
an editable install (`pip install -e .`) and a plain checkout use the source tree's `utils/` beside `avtk/`, so an
edit there is live. A recipe therefore needs no `utils` symlink, and a copy of it works wherever it lands.
"""
from pathlib import Path

from avtk.errors import AvtkError

# A helper every recipe sources; a directory holding it is taken for the helpers' directory.
_MARKER = "parse_options.sh"


def utils_dir():
    """The absolute directory of the shell helpers: the installed copy `<package>/utils`, else the source tree's
    `utils/` next to the package. Raises AvtkError naming both places when neither holds parse_options.sh (a
    broken install)."""
    package = Path(__file__).resolve().parent
    candidates = (package / "utils", package.parent / "utils")
    for candidate in candidates:
        if (candidate / _MARKER).is_file():
            return candidate
    raise AvtkError(f"avtk's shell helpers (utils/{_MARKER}) are in neither {candidates[0]} nor {candidates[1]}: "
                    "reinstall avtk (pip install .) from a complete source tree")
