"""The README's first lines are the two commands users run; .ci/run must run the second verbatim."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0] == "```bash", "README must open with the two commands in a bash block"
    return lines[1], lines[2]


def test_ci_runs_the_readme_test_command():
    _, test_cmd = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci, f".ci/run must run the README's test command: {test_cmd}"


def test_readme_main_command_runs_ppbench():
    main_cmd, _ = _readme_commands()
    assert main_cmd.endswith("ppbench run")


def test_ci_fails_when_pytest_collects_nothing():
    # `set -e` plus pytest's own exit code 5 (no tests) makes an empty run fail, not pass silently.
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci and "|| true" not in ci
