"""The `avtk` command: dispatch, help for every command and option, YAML configs, logging, clean errors."""
import importlib
import re

import pytest

from avtk.cli import BIN_DIR, commands
from conftest import avtk

ALL = sorted(commands())


def test_help_lists_every_command_with_a_summary():
    out = avtk("--help").stdout
    modules = {p.stem.replace("_", "-") for p in BIN_DIR.glob("*.py") if not p.name.startswith("_")}
    assert modules == set(ALL) and "make-synthetic-corpus" in modules
    for name, summary in commands().items():
        assert summary, f"{name} has no one-line summary"
        assert re.search(rf"^  {re.escape(name)}\s+{re.escape(summary)}$", out, re.M)


@pytest.mark.parametrize("command", ALL)
def test_every_option_is_documented(command):
    parser = importlib.import_module(f"avtk.bin.{command.replace('-', '_')}").get_parser()
    undocumented = [a.option_strings or a.dest for a in parser._actions if a.dest != "help" and not a.help]
    assert not undocumented
    assert "--config" in {o for a in parser._actions for o in a.option_strings}


def test_command_help_runs():
    out = avtk("make-synthetic-corpus", "--help").stdout
    for option in ("--num-train-speakers", "--label-noise", "--seed", "--config", "--verbose"):
        assert option in out


def test_unknown_command():
    proc = avtk("no-such-command", check=False)
    assert proc.returncode == 2 and "unknown command 'no-such-command'" in proc.stderr


def test_yaml_config_sets_options_and_rejects_unknown_keys(tmp_path):
    scores = tmp_path / "scores.txt"
    scores.write_text("a b 0.9 target\na c 0.1 nontarget\nb c 0.3 nontarget\n")
    conf = tmp_path / "m.yaml"
    conf.write_text("p_target: [0.5]\n")
    out = avtk("compute-metrics", "--config", conf, scores).stdout
    assert "minDCF(p=0.5)" in out and "minDCF(p=0.01)" not in out
    conf.write_text("p_targett: 0.5\n")
    proc = avtk("compute-metrics", "--config", conf, scores, check=False)
    assert proc.returncode == 1 and f"{conf}:1: unknown option 'p_targett' (known: " in proc.stderr


def test_errors_are_one_logged_line_and_exit_1(tmp_path):
    proc = avtk("score", "--trials", tmp_path / "missing", "scp:x.scp", tmp_path / "out", check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ERROR \[avtk score\] .*missing", proc.stderr)
    assert not (tmp_path / "out").exists()


def test_bad_scores_file_names_file_and_line(tmp_path):
    scores = tmp_path / "scores.txt"
    scores.write_text("a b 0.9 target\na c high nontarget\n")
    proc = avtk("compute-metrics", scores, check=False)
    assert proc.returncode == 1 and f"{scores}:2: score 'high' is not a number" in proc.stderr
