"""A stage clock for scripts, and peak-memory counters.

The library's runs read one clock (engine.now_ms: the host clock after the calling thread's
stream has finished), in the five-stage records, the baselines and the engine alike. StageClock
marks stage boundaries after synchronizing whole devices, for probes that time stages by hand
(scripts/target_stage12_bench.py). On CPU everything is `time.perf_counter`.
"""
from __future__ import annotations

import time

import torch


def sync(device: torch.device | str | None) -> None:
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """Marks stage boundaries: `clock.mark("load")` ends stage "load" where the previous mark ended."""

    def __init__(self, *devices: torch.device | str | None, t0: float | None = None):
        self.devices = [torch.device(d) for d in devices if d is not None]
        self.t0 = time.perf_counter() if t0 is None else t0
        self._last = self.t0
        self.stages_ms: dict[str, float] = {}
        self.ends_ms: dict[str, float] = {}

    def now_ms(self) -> float:
        for d in self.devices:
            sync(d)
        return (time.perf_counter() - self.t0) * 1e3

    def mark(self, stage: str) -> float:
        for d in self.devices:
            sync(d)
        now = time.perf_counter()
        self.stages_ms[stage] = (now - self._last) * 1e3
        self.ends_ms[stage] = (now - self.t0) * 1e3
        self._last = now
        return self.stages_ms[stage]


def peak_memory_reset(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str) -> int | None:
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None
