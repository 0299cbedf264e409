"""Print one step of a GitHub workflow as a bash script, so a lent host runs the step as written.

    python3 scripts/workflow_step.py nightly-gpu.yml "Benchmarks" steps.base.outputs.path=FILE ...

The step is the first whose name starts with the given text. `.venv/bin/python` and
`.venv/bin/ppbench` become the interpreter running this script (`-m harness` for ppbench), and every
`${{ KEY }}` given as KEY=VALUE is replaced; an expression left unreplaced is an error (exit 2),
so a changed workflow cannot run half-substituted. Used by scripts/nightly_dsec_gpu.sh.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"


def step_script(workflow: str, name: str, values: dict[str, str], python: str = sys.executable) -> str:
    doc = yaml.safe_load((WORKFLOWS / workflow).read_text())
    steps = [s for job in doc["jobs"].values() for s in job["steps"] if s.get("name", "").startswith(name)]
    if not steps or "run" not in steps[0]:
        raise SystemExit(f"workflow_step: {WORKFLOWS / workflow} has no run step named {name!r}...")
    script = steps[0]["run"].replace(".venv/bin/python", python).replace(".venv/bin/ppbench", f"{python} -m harness")
    for key, value in values.items():
        script = script.replace("${{ %s }}" % key, value)
    left = re.findall(r"\$\{\{[^}]*\}\}", script)
    if left:
        print(f"workflow_step: {name!r} of {workflow} still has {', '.join(left)}", file=sys.stderr)
        raise SystemExit(2)
    return script


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    values = dict(a.split("=", 1) for a in argv[2:])
    print(step_script(argv[0], argv[1], values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
