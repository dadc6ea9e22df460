"""The README's two Quickstart commands exist, and CI runs exactly its test command."""
import re

from conftest import REPO


def quickstart_commands():
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section, re.S)


def test_two_commands_and_ci_runs_the_test_one():
    main_job, tests = quickstart_commands()
    assert "egs/mini" in main_job and "./run.sh" in main_job
    assert "pytest" in tests
    for cmd in (main_job, tests):
        assert cmd.startswith("python -m pip install torch==2.13.0 && ")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci
    assert "python -m pytest -q -m recipe tests" in ci  # the mini recipe end to end, apart from the suite
