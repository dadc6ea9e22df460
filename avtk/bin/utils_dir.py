"""Print the directory of avtk's Kaldi-style shell helpers (utils/), for a recipe's path.sh to put on PATH."""
from avtk.command import make_parser


def get_parser():
    return make_parser(
        "Print the absolute directory of avtk's shell helpers (parse_options.sh, run.pl, slurm.pl, split_scp, "
        "validate_data_dir.sh, ...): the copy a normal install carries inside the package, or the source tree's "
        "utils/ for an editable install. A recipe's path.sh does `export PATH=\"$(avtk utils-dir):$PATH\"`, so "
        "a copy of the recipe needs no utils symlink."
    )


def main(args):
    from avtk.shell import utils_dir

    print(utils_dir())
