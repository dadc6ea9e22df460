"""utils/parse_options.sh, sourced by a tiny recipe script with defaults."""
import pytest

from conftest import UTILS, run

SCRIPT = """\
#!/usr/bin/env bash
stage=0
stop_stage=100
nj=4
use_gpu=false
extra_opts=
{help}
. {utils}/parse_options.sh || exit 1
echo "stage=$stage stop_stage=$stop_stage nj=$nj use_gpu=$use_gpu extra_opts=$extra_opts"
echo "args=$#:$*"
"""


def make_script(tmp_path, help_message='help_message="Usage: demo.sh [options] <data-dir>"'):
    path = tmp_path / "demo.sh"
    path.write_text(SCRIPT.format(help=help_message, utils=UTILS))
    return path


def demo(tmp_path, *args, check=True, **kwargs):
    return run(["bash", make_script(tmp_path, **kwargs), *args], cwd=tmp_path, check=check)


def test_defaults(tmp_path):
    out = demo(tmp_path).stdout.splitlines()
    assert out == ["stage=0 stop_stage=100 nj=4 use_gpu=false extra_opts=", "args=0:"]


def test_options_and_positional_args(tmp_path):
    out = demo(tmp_path, "--stage", "3", "--stop-stage", "5", "--nj", "8", "data/train", "exp").stdout
    assert out.splitlines() == ["stage=3 stop_stage=5 nj=8 use_gpu=false extra_opts=",
                                "args=2:data/train exp"]


def test_equals_form_and_values_with_spaces_or_dashes(tmp_path):
    out = demo(tmp_path, "--stage=2", "--use-gpu=true", "--extra-opts", "--foo bar=1", "x").stdout
    assert out.splitlines() == ["stage=2 stop_stage=100 nj=4 use_gpu=true extra_opts=--foo bar=1",
                                "args=1:x"]


def test_stops_at_first_non_option_and_double_dash(tmp_path):
    out = demo(tmp_path, "data", "--nj", "3").stdout.splitlines()
    assert out == ["stage=0 stop_stage=100 nj=4 use_gpu=false extra_opts=", "args=3:data --nj 3"]
    out = demo(tmp_path, "--nj", "2", "--", "--stage").stdout.splitlines()
    assert out == ["stage=0 stop_stage=100 nj=2 use_gpu=false extra_opts=", "args=1:--stage"]


@pytest.mark.parametrize("args, message", [
    (["--stgae", "3"], "unknown option --stgae"),
    (["--nj=2", "--bogus-opt=1"], "unknown option --bogus-opt"),
    (["--help-message", "x"], "unknown option --help-message"),
    (["--use-gpu", "yes"], "option --use-gpu takes true or false, not 'yes'"),
    (["--nj"], "option --nj needs a value"),
    (["--stage", "abc"], "option --stage takes an integer, not 'abc'"),
    (["--nj=2.5"], "option --nj takes an integer, not '2.5'"),
])
def test_errors(tmp_path, args, message):
    proc = demo(tmp_path, *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stdout == ""


def test_help(tmp_path):
    proc = demo(tmp_path, "--nj", "8", "--help")
    lines = proc.stdout.splitlines()
    assert lines[0] == "Usage: demo.sh [options] <data-dir>"
    for option in ("  --stage 0", "  --stop-stage 100", "  --nj 8", "  --use-gpu false",
                   "  --extra-opts ''"):
        assert option in lines, proc.stdout
    assert not any("help" in line for line in lines[1:])
    assert "stage=" not in proc.stdout  # exited before the script went on

    proc = demo(tmp_path, "-h", help_message="")
    assert proc.stdout.startswith("Usage: ") and "  --nj 4" in proc.stdout


@pytest.mark.parametrize("recipe", ["mini", "voxceleb"])
@pytest.mark.parametrize("args, message", [
    (["--nj", "0"], "./run.sh: option --nj must be >= 1, not 0"),
    (["--nj", "-3"], "./run.sh: option --nj must be >= 1, not -3"),
    (["--stage", "abc"], "./run.sh: option --stage takes an integer, not 'abc'"),
])
def test_recipes_check_integer_options_before_any_stage(tmp_path, recipe, args, message):
    from conftest import REPO

    proc = run(["./run.sh", *args, "--data", tmp_path / "nodata"] if recipe == "mini" else ["./run.sh", *args],
               cwd=REPO / "egs" / recipe, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == message, proc.stderr
    assert not (tmp_path / "nodata").exists()
