"""Measured device times into pytest-benchmark, through its public API: `pedantic()` for the
rounds and `--benchmark-timer` for the clock. No torch here: the plugin names this module's clock
at pytest start-up, and pytest-benchmark imports it then.
"""
from __future__ import annotations

import time


class ReplayClock:
    """The session's pytest-benchmark timer (`--benchmark-timer harness.replay.replay_clock`,
    which the plugin sets unless the user gives another): time.perf_counter, except while
    record_rounds replays measured rounds. pytest-benchmark reads the timer before and after each
    round; while rounds are loaded, this clock advances by exactly the next measured duration, so
    each round's stats hold that device time."""

    def __init__(self):
        self.__name__ = "replay_clock"
        self._rounds: list[float] | None = None
        self._now, self._started = 0.0, False

    def load(self, seconds: list[float]) -> None:
        self._rounds, self._now, self._started = list(seconds), 0.0, False

    def unload(self) -> int:
        """Stops replaying; returns how many loaded rounds were not read."""
        left, self._rounds = len(self._rounds or []), None
        return left

    def __call__(self) -> float:
        if self._rounds is None:
            return time.perf_counter()
        if not self._started:
            self._started = True
            return self._now
        self._started = False
        self._now += self._rounds.pop(0)
        return self._now


replay_clock = ReplayClock()
REPLAY_TIMER = "harness.replay.replay_clock"


def record_rounds(benchmark, seconds: list[float], source: str, failures=()) -> None:
    """One benchmark round per measured value (seconds), through pytest-benchmark's public
    pedantic() and --benchmark-timer; `source` (how the times were measured) goes to extra_info.
    With --benchmark-disable this is a no-op run; with an empty list it fails the test, naming the
    failed samples, since a benchmark with no data must not pass."""
    if not seconds:
        raise AssertionError("no successful measurement to record; failures:\n"
                             + ("\n".join(failures) or "(no samples selected)"))
    benchmark.extra_info["timing_source"] = source
    replay_clock.load(seconds)
    try:
        benchmark.pedantic(lambda: None, rounds=len(seconds), iterations=1, warmup_rounds=0)
    finally:
        left = replay_clock.unload()
    if left and not benchmark.disabled:
        raise AssertionError(f"--benchmark-timer is not {REPLAY_TIMER}: the measured rounds were not "
                             "replayed (leave --benchmark-timer unset for ppbench's benchmarks)")
