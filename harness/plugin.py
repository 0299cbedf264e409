"""pytest plugin for ppbench: registered as the `pytest11` entry point `harness.plugin` of an
installed ppbench (so it loads however pytest is invoked), and named by pytest.ini's
`-p harness.plugin` for a source tree that is not installed (the same name: it never loads twice).

Options, hooks and fixtures each live in one place here; hooks are thin and delegate to plain
functions in harness/. The options come from the one option table (harness/options.py) that
`ppbench run` uses too, and are resolved once into a RunConfig at configure time, so a wrong value
stops the session with one line before anything is collected. How measurements reach
pytest-benchmark: the session measures each duration's samples once, with the same stage runner
and engine as `ppbench run` (CUDA-synchronized stage clocks, CUDA events per token), and each
benchmark replays those measured device times into its stats (`record_rounds`).
"""
from __future__ import annotations

import pytest

from . import options

REPLAY_TIMER = "harness.replay.replay_clock"   # a literal: harness.replay is imported by pytest-benchmark

MARKERS = (
    "gpu: a GPU benchmark: skips without CUDA, runs on CPU in smoke mode (--ppbench-device cpu)",
    "cuda: needs a real CUDA device, also in smoke mode (skips without one)",
    "slow: long-running (more than a few seconds on 2 CPU cores)",
)


def pytest_addoption(parser):
    group = parser.getgroup("ppbench", "ppbench: parallel-prefill speculative decoding benchmarks")
    options.add_pytest_options(group)


def active(config) -> bool:
    """Whether this session is a ppbench one: the plugin is named (`-p harness.plugin` on the
    command line or in the ini's addopts, as this repository's pytest.ini does), or a --ppbench-*
    option is given. The entry point loads the plugin into every pytest session of an environment
    that has ppbench installed; in other projects' sessions it registers its markers and options
    and changes nothing else (no timer, no forced raw-round saving, no torch import)."""
    args = [*map(str, config.invocation_params.args), *map(str, config.getini("addopts") or [])]
    return any(a.startswith("--ppbench") for a in args) or "harness.plugin" in " ".join(args)


def pytest_configure(config):
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    config._ppbench_cfg = None
    if not active(config):
        return
    # Measured device times reach pytest-benchmark through its public --benchmark-timer: a clock
    # that is time.perf_counter except while harness.replay.record_rounds replays measured rounds.
    if getattr(config.option, "benchmark_timer", None) == "time.perf_counter":
        config.option.benchmark_timer = REPLAY_TIMER
    # The regression gate needs raw rounds, which pytest-benchmark saves only with --benchmark-save-data.
    if getattr(config.option, "benchmark_autosave", False) or getattr(config.option, "benchmark_save", None):
        config.option.benchmark_save_data = True
    config._ppbench_cfg = _resolve(config)


def _resolve(config):
    from .console import quiet_third_party
    from .errors import UsageError
    from .runconfig import resolve   # imports torch: deferred so that `pytest --help` stays fast

    quiet_third_party(progress=True)
    try:
        return resolve(options.from_pytest(config), side="pytest")
    except UsageError as e:
        raise pytest.UsageError(f"ppbench: {e}") from None


# -- hooks -----------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords or "cuda" in item.keywords for item in items):
        return
    if config._ppbench_cfg is None:    # gpu/cuda-marked tests in a session that is not ppbench's
        return
    _deselect_durations(config, items)
    import torch  # deferred: the plugin loads with every pytest run, torch only when tests are collected

    if torch.cuda.is_available():
        return
    # Without CUDA: cuda-marked tests always skip; gpu-marked ones skip unless the user asked for
    # the CPU smoke mode (--ppbench-device cpu).
    smoke = config.getoption("--ppbench-device") == "cpu"
    no_cuda = pytest.mark.skip(reason="needs CUDA (cuda marker: not even in CPU smoke mode); no CUDA device here")
    no_gpu = pytest.mark.skip(reason="needs CUDA (gpu marker; --ppbench-device cpu runs it on CPU); "
                                     "no CUDA device here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(no_cuda)
        elif "gpu" in item.keywords and not smoke:
            item.add_marker(no_gpu)


def _deselect_durations(config, items):
    """--ppbench-durations narrows the duration-parametrized benchmarks at collection time."""
    wanted = set(config._ppbench_cfg.durations)
    keep, drop = [], []
    for item in items:
        duration = getattr(getattr(item, "callspec", None), "params", {}).get("duration")
        (drop if duration is not None and duration not in wanted else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# pytest-benchmark's hooks: optional, so that pytest without pytest-benchmark still loads the plugin.
@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    # benchsupport (torch, the models) is imported by the hooks and fixtures that need it, not at
    # plugin load: every pytest run loads this plugin, most never touch a model.
    from .benchsupport import machine_info_extra

    machine_info.update(machine_info_extra())


@pytest.hookimpl(optionalhook=True)
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

    if request.config._ppbench_cfg is None:   # ppbench's benchmarks collected outside its own sessions
        request.config._ppbench_cfg = _resolve(request.config)
    bench = BenchSession(request.config._ppbench_cfg)
    request.config._ppbench_session = bench
    yield bench
    bench.close()


@pytest.fixture(scope="session")
def ppbench_bounds(request, ppbench_session):
    from .benchsupport import load_session_bounds

    return load_session_bounds(request.config, ppbench_session)
