"""Clocks for stage and per-token timing.

On CUDA a stage boundary synchronizes the device and then reads the host clock, so a stage's time
is the wall time until its GPU work has finished (nothing else synchronizes inside a stage).
Per-token decode times use CUDA events, read after the loop, so the decode loop itself never
synchronizes. On CPU everything is `time.perf_counter`.
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


class TokenTimer:
    """Per-step times inside a loop without synchronizing each step (CUDA events on GPU)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._marks: list = []

    def tick(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            # On the model's device's current stream, not the current device's: with the drafter
            # on a second GPU, a bare record() timed an idle stream on the other GPU.
            ev.record(torch.cuda.current_stream(self.device))
            self._marks.append(ev)
        else:
            self._marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        """Durations between consecutive ticks (synchronizes once, on CUDA)."""
        if len(self._marks) < 2:
            return []
        if self.cuda:
            self._marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(self._marks, self._marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self._marks, self._marks[1:])]


def peak_memory_reset(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str) -> int | None:
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None
