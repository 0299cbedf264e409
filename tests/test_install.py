"""A plain install works: the wheel, installed into a fresh virtual environment without the test
extra, runs `ppbench run` on one duration and `ppbench compare` from a directory outside the
checkout, and puts no top-level `fixtures` package into site-packages."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _sh(args, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{args}: rc {proc.returncode}\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


def _save(path: Path, scale: float) -> Path:
    rounds = [scale * (1 + 0.01 * i) for i in range(6)]
    bench = {"name": "test_stage[decode-4s-target]", "fullname": "tests/test_benchmarks.py::test_stage[decode-4s-target]",
             "params": None, "extra_info": {},
             "stats": {"data": rounds, "rounds": len(rounds), "median": sorted(rounds)[3], "min": min(rounds),
                       "max": max(rounds), "mean": sum(rounds) / len(rounds), "stddev": 0.01}}
    path.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "test"}}, "commit_info": {},
                                "datetime": "2026-01-01T00:00:00", "version": "5.2.3", "benchmarks": [bench]}))
    return path


def test_the_wheel_in_a_fresh_venv_runs_the_cli(tmp_path):
    """Hermetic: the wheel is built from a copy of the tracked tree (no build/ or egg-info in the
    checkout), and the fresh environment gets its own HOME and caches, so nothing it writes (a
    matplotlib font cache naming its own site-packages, ppbench's data) outlives it for other tests."""
    src, dist = tmp_path / "src", tmp_path / "dist"
    files = _sh(["git", "-C", str(ROOT), "ls-files"]).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    _sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)], timeout=600)
    wheel = next(dist.glob("ppbench-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # torch first, pinned to the CPU build this machine has on disk (README); then the wheel and its
    # runtime dependencies from the package index, without the test extra.
    torch_pin = f"torch=={__import__('torch').__version__.split('+')[0]}"
    _sh([str(py), "-m", "pip", "install", "-q", torch_pin], timeout=900)
    _sh([str(py), "-m", "pip", "install", "-q", str(wheel)], timeout=900)
    site = Path(_sh([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    assert (site / "harness" / "calibration" / "gate-thresholds.json").is_file()
    assert not (site / "fixtures").exists(), "a top-level 'fixtures' package clashes with PyPI's"

    work = tmp_path / "elsewhere"
    work.mkdir()
    ppbench = str(env_dir / "bin" / "ppbench")
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(home), "PPBENCH_CACHE": str(home / "ppbench"),
           "MPLCONFIGDIR": str(home / "matplotlib"), "XDG_CACHE_HOME": str(home / ".cache")}
    assert _sh([ppbench, "--version"], cwd=work, env=env).stdout.startswith("ppbench ")
    run = _sh([ppbench, "run", "--profile", "tiny", "--durations", "500ms", "--samples-per-duration", "1", "--max-new-tokens", "6",
               "--assisted", "off", "--no-progress", "--out", "r"], cwd=work, env=env, timeout=900)
    assert (work / "r" / "report.md").is_file(), run.stdout
    assert run.stderr.strip() == "", run.stderr      # no third-party noise, no bars with --no-progress
    cmp_ = _sh([ppbench, "compare", str(_save(work / "a.json", 1e-3)), str(_save(work / "b.json", 1e-3))],
               cwd=work, env=env, timeout=300)
    assert "unchanged" in cmp_.stdout
