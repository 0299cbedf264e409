"""Measured device times reach pytest-benchmark's saved stats through its public API
(pedantic + --benchmark-timer), one round per measured value, and nothing else is affected."""
from __future__ import annotations

import json

from pytest_benchmark.utils import load_timer

from harness import plugin, replay

pytest_plugins = ["pytester"]

BENCH = """
import time
from harness.replay import record_rounds

def test_replayed(benchmark):
    record_rounds(benchmark, [0.5, 0.25, 2.0], "hand-made")

def test_plain(benchmark):
    benchmark.pedantic(time.sleep, args=(0.001,), rounds=3, iterations=1)
"""


def _saved(pytester, *args):
    pytester.makepyfile(test_bench=BENCH)
    out = pytester.path / "out.json"
    result = pytester.runpytest("-p", "harness.plugin", "-p", "no:cacheprovider",
                                f"--benchmark-json={out}", *args)
    return result, (json.loads(out.read_text()) if out.exists() else None)


def test_replayed_rounds_are_the_measured_values_and_plain_benchmarks_keep_a_real_clock(pytester):
    """The saved rounds are exactly the measured seconds, the save names the replay clock and the
    timing source; a benchmark that does not replay is timed by perf_counter as usual."""
    result, doc = _saved(pytester)
    result.assert_outcomes(passed=2)
    by = {b["name"]: b for b in doc["benchmarks"]}
    rep = by["test_replayed"]
    assert rep["stats"]["data"] == [0.5, 0.25, 2.0]
    assert rep["options"]["timer"] == "replay_clock" and plugin.REPLAY_TIMER == replay.REPLAY_TIMER
    assert rep["extra_info"]["timing_source"] == "hand-made"
    plain = by["test_plain"]["stats"]["data"]
    assert len(plain) == 3 and all(0.0005 < x < 1.0 for x in plain)


def test_another_timer_fails_the_replay_instead_of_saving_wrong_rounds(pytester):
    result, _ = _saved(pytester, "--benchmark-timer", "time.process_time")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*--benchmark-timer is not harness.replay.replay_clock*"])


def test_the_plugins_timer_name_resolves_to_the_replay_clock():
    assert load_timer(plugin.REPLAY_TIMER).target is replay.replay_clock
