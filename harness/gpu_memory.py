"""Whole-GPU memory, across processes, per device (NVML).

torch's allocator counters see one process: with the drafter in its own process
(harness/drafter_process.py) they miss its weights, caches and graph pools, and the CUDA contexts
themselves. NVML reports what the device has in use, whoever holds it. `PeakSampler` polls it from
a thread during a run and keeps the peak per device; `used_bytes` reads it once. nvidia-ml-py is
imported only when called (no NVML on CPU hosts); without it the device-wide figure comes from
cudaMemGetInfo (same number, no per-process split).
"""
from __future__ import annotations

import os
import threading

import torch


ALLOC_ENV = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
EXPANDABLE = "expandable_segments:True"


def _set_allocator_settings(setting: str) -> None:
    """torch's runtime allocator setter: torch._C._accelerator_setAllocatorSettings where it exists
    (torch.cuda.memory._set_allocator_settings is a deprecated alias of it), the alias before that."""
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    (setter or torch.cuda.memory._set_allocator_settings)(setting)


def allocator_setting(device, choice: str = "default") -> str | None:
    """The CUDA allocator setting a run with --cuda-alloc `choice` has in force ("" for torch's
    default), or None off CUDA: the environment's when it names one, else expandable segments
    for "expandable". No side effect: what configure_allocator sets and meta.json records."""
    if torch.device(device).type != "cuda":
        return None
    env = next((os.environ[name] for name in ALLOC_ENV if os.environ.get(name)), "")
    return env or (EXPANDABLE if choice == "expandable" else "")


def configure_allocator(choice: str, device) -> str | None:
    """Sets the CUDA caching allocator for this process and the processes it starts (the drafter's
    inherit the environment); returns allocator_setting. A PYTORCH_CUDA_ALLOC_CONF (or
    PYTORCH_ALLOC_CONF) in the environment is the user's and wins. "expandable": expandable
    segments, whose freed pages return to the device on empty_cache, where fixed segments stay
    reserved while any block in them lives (measured: docs/results/h200-fused-decode)."""
    setting = allocator_setting(device, choice)
    if setting == EXPANDABLE and not any(os.environ.get(name) for name in ALLOC_ENV):
        os.environ[ALLOC_ENV[0]] = EXPANDABLE
        _set_allocator_settings(EXPANDABLE)
    return setting


def _nvml():
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver / no NVML: fall back to cudaMemGetInfo
        return None
    return pynvml


def _nvml_handle(nvml, index: int):
    # NVML numbers devices physically; CUDA_VISIBLE_DEVICES renumbers them for CUDA.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if index < len(ids):
            v = ids[index]
            return nvml.nvmlDeviceGetHandleByUUID(v) if v.startswith(("GPU-", "MIG-")) else \
                nvml.nvmlDeviceGetHandleByIndex(int(v))
    return nvml.nvmlDeviceGetHandleByIndex(index)


def used_bytes(device) -> dict:
    """{"device_used": bytes in use on the device (all processes), "processes": {pid: bytes} or
    None without NVML, "source": "nvml" | "cudaMemGetInfo"} for a CUDA device."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    nvml = _nvml()
    if nvml is None:
        free, total = torch.cuda.mem_get_info(index)
        return {"device_used": int(total - free), "processes": None, "source": "cudaMemGetInfo"}
    handle = _nvml_handle(nvml, index)
    procs = {}
    try:
        for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            procs[int(p.pid)] = int(p.usedGpuMemory or 0)
    except Exception:  # noqa: BLE001 - some drivers/containers hide processes
        procs = None
    return {"device_used": int(nvml.nvmlDeviceGetMemoryInfo(handle).used), "processes": procs, "source": "nvml"}


class PeakSampler:
    """Polls used_bytes() of `devices` every `interval_s` in a thread; `peaks()` -> {device: {...}}
    with the peak device-wide bytes and the peak per-process bytes seen. A context manager."""

    def __init__(self, devices, interval_s: float = 0.05):
        self.devices = sorted({str(torch.device(d)) for d in devices if torch.device(d).type == "cuda"})
        self.interval_s = interval_s
        self._peak = {d: {"device_used": 0, "processes": {}, "source": None} for d in self.devices}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ppbench-nvml", daemon=True)

    def sample(self) -> None:
        for d in self.devices:
            now, peak = used_bytes(d), self._peak[d]
            peak["source"] = now["source"]
            peak["device_used"] = max(peak["device_used"], now["device_used"])
            for pid, b in (now["processes"] or {}).items():
                peak["processes"][pid] = max(peak["processes"].get(pid, 0), b)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self):
        """Starts sampling (once: entering a started sampler again keeps it running)."""
        if self.devices and not self._thread.is_alive() and not self._stop.is_set():
            self.sample()
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.devices:
            self.sample()

    def peaks(self) -> dict:
        return {d: {"peak_device_used_bytes": p["device_used"],
                    "peak_process_bytes": {str(k): v for k, v in p["processes"].items()},
                    "source": p["source"]} for d, p in self._peak.items()}
