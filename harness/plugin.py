"""pytest plugin for ppbench, loaded by pytest.ini (`-p harness.plugin`).

Options, hooks and fixtures each live in one place here; hooks are thin and delegate to plain
functions in harness/. How measurements reach pytest-benchmark: the session measures each
duration's samples once, with the same stage runner and engine as `ppbench run` (CUDA-synchronized
stage clocks, CUDA events per token), and each benchmark replays those measured device times into
its stats (`record_rounds`). Saved runs therefore hold real device times, one round per sample, and
the 90 stage benchmarks cost one pass over the data instead of 90.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

# -- options -------------------------------------------------------------------------------------


DEFAULT_GATE_THRESHOLDS = str(Path(__file__).resolve().parent / "calibration" / "gate-thresholds.json")


def pytest_addoption(parser):
    g = parser.getgroup("ppbench", "ppbench: parallel-prefill speculative decoding benchmarks")
    g.addoption("--ppbench-profile", default="tiny", choices=["tiny", "7b-shaped", "real"],
                help="model profile (default tiny)")
    g.addoption("--ppbench-drafter-path", default=None, help="EventGPT checkpoint dir (profile real)")
    g.addoption("--ppbench-target-path", default=None, help="Video-LLaVA checkpoint dir (profile real)")
    g.addoption("--ppbench-data-root", default=None, help="dataset root (default: embedded synthetic)")
    g.addoption("--ppbench-device", default="auto",
                help="cpu | cuda | cuda:N (auto: cuda if available). An explicit cpu runs the "
                     "gpu-marked benchmarks on CPU (smoke mode)")
    g.addoption("--ppbench-drafter-device", default=None, help="drafter on another device, e.g. cuda:1")
    g.addoption("--ppbench-quant", default=None, choices=["nf4", "none"])
    g.addoption("--ppbench-dtype", default=None, choices=["float32", "bfloat16", "float16"])
    g.addoption("--ppbench-samples", type=int, default=2, help="samples per duration (= rounds)")
    g.addoption("--ppbench-durations", default=None, help="comma-separated subset of durations")
    g.addoption("--ppbench-max-new-tokens", type=int, default=50)
    g.addoption("--ppbench-decode", default="auto", choices=["auto", "hf", "static", "cuda-graph"],
                help="decode implementation (auto: cuda-graph on CUDA, hf on CPU); see models/static_decode.py")
    # The choices are literals here, so that loading the plugin does not import torch; they are
    # engine.OVERLAP_POLICIES and pipeline.DRAFTER_PROCESS_CHOICES (tests/test_cli.py checks).
    g.addoption("--ppbench-overlap", default="auto", choices=["auto", "always", "yield-gpu"],
                help="hidden drafting policy of the engine benchmarks (see ppbench run --overlap)")
    g.addoption("--ppbench-drafter-process", choices=["auto", "on", "off"], nargs="?", const="on", default="auto",
                help="the engine benchmarks' drafter in its own process: auto (on when it runs on CUDA), "
                     "on, off (see ppbench run --drafter-process)")
    g.addoption("--ppbench-cache-len", type=int, default=None, help="static KV cache positions (default: sized "
                "from the visual tokens and --ppbench-max-new-tokens)")
    g.addoption("--ppbench-out", default=None, help="where the session report goes "
                                                    "(default .benchmarks/ppbench-report)")
    g.addoption("--ppbench-bounds", default=None, help="bounds JSON (default harness/calibration/bounds/<profile>-<device>.json)")
    g.addoption("--ppbench-gate", default=None, metavar="BASE_JSON",
                help="after the session, compare this session's saved benchmark JSON against BASE_JSON "
                     "with the statistical gate; regressions fail the session")
    g.addoption("--ppbench-gate-thresholds", default=DEFAULT_GATE_THRESHOLDS, metavar="FILE",
                help="per-benchmark thresholds for --ppbench-gate (default: harness/calibration/gate-thresholds.json; "
                     "'none' for a flat 5%%)")
    g.addoption("--ppbench-inject-delay", default=None, metavar="STAGE:MS",
                help="testing aid: add MS of real sleep to every STAGE (checks that the gate fires)")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skips cleanly without one)")
    config.addinivalue_line("markers", "slow: long-running on 2 CPU cores")
    # The regression gate needs raw rounds, which pytest-benchmark saves only with --benchmark-save-data.
    if getattr(config.option, "benchmark_autosave", False) or getattr(config.option, "benchmark_save", None):
        config.option.benchmark_save_data = True


# -- hooks -----------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config, items):
    _deselect_durations(config, items)
    # gpu-marked tests skip with a reason when CUDA is absent, unless the user explicitly asked for
    # the CPU smoke mode (--ppbench-device cpu).
    import torch

    if torch.cuda.is_available() or config.getoption("--ppbench-device") == "cpu":
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker); no CUDA device here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _deselect_durations(config, items):
    """--ppbench-durations narrows the duration-parametrized benchmarks at collection time."""
    wanted = config.getoption("--ppbench-durations")
    if not wanted:
        return
    wanted = {d.strip() for d in wanted.split(",") if d.strip()}
    keep, drop = [], []
    for item in items:
        duration = getattr(getattr(item, "callspec", None), "params", {}).get("duration")
        (drop if duration is not None and duration not in wanted else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_benchmark_update_machine_info(config, machine_info):
    from .benchsupport import machine_info_extra

    machine_info.update(machine_info_extra())


def pytest_benchmark_update_json(config, benchmarks, output_json):
    session = getattr(config, "_ppbench_session", None)
    if session is not None:
        output_json["ppbench"] = session.meta
    config._ppbench_saved_json = output_json


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    from .benchsupport import finish_session

    finish_session(session)


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ppbench_session(request):
    """Loads the dataset and both models once per session; measures lazily per duration."""
    from .benchsupport import BenchSession

    bench = BenchSession.from_config(request.config)
    request.config._ppbench_session = bench
    yield bench
    bench.close()


@pytest.fixture(scope="session")
def ppbench_bounds(request, ppbench_session):
    from .benchsupport import load_session_bounds

    return load_session_bounds(request.config, ppbench_session)
