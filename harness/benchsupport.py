"""Plain functions behind the pytest plugin (harness/plugin.py keeps only hooks and fixtures)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

from . import bounds, compare, pipeline
from .calibration import GATE_THRESHOLDS
from .engine_suite import engine_records_for, warm_up_engine
from .errors import PpbenchError
from .gpu_memory import PeakSampler
from .records import RecordWriter
from .report import write_report
from .runconfig import RunConfig
from .stages import STAGES, run_stage_pipeline, warm_up


# -- machine info -------------------------------------------------------------------------------------
def machine_info_extra() -> dict:
    info = {"ppbench_versions": pipeline.versions()}
    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(i)
        info["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                       "memory_bytes": int(props.total_memory),
                       "capability": f"{props.major}.{props.minor}",
                       "driver": _nvidia_driver(), "cuda": torch.version.cuda}
    else:
        info["gpu"] = None
    return info


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except Exception:
        return None


# -- the session -------------------------------------------------------------------------------------
def _gpu_cycles_per_ms(device) -> float:
    """Calibrates torch.cuda._sleep (a spin of N GPU clock cycles) against CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.device(device):
        torch.cuda._sleep(1_000_000)               # warm-up
        start.record()
        torch.cuda._sleep(10_000_000)
        end.record()
        end.synchronize()
    return 10_000_000 / start.elapsed_time(end)


def _inject_delay(runners, spec: str | None) -> str | None:
    """--ppbench-inject-delay STAGE:MS: a real slowdown of STAGE, for checking the gate.

    Host stages (load, preprocess) get a host sleep. GPU stages on CUDA get a GPU spin of MS
    queued on the model's device before each call, so it lands on the device timeline the
    benchmarks measure (a host sleep would hide behind queued GPU work when decode does not
    synchronize per step); on CPU everything is a host sleep."""
    if not spec:
        return None
    stage, ms = spec.split(":")
    method = {"load": "load_inputs", "preprocess": "preprocess", "vision": "encode_vision",
              "prefill": "prefill", "decode": "decode"}[stage]
    delay = float(ms) / 1e3
    for runner in runners:
        inner = getattr(runner, method)
        if runner.device.type == "cuda" and stage not in ("load", "preprocess"):
            cycles = int(float(ms) * _gpu_cycles_per_ms(runner.device))

            def slowed(*a, _inner=inner, _cycles=cycles, _device=runner.device, **k):
                with torch.cuda.device(_device):     # _sleep queues on the current device
                    torch.cuda._sleep(_cycles)
                return _inner(*a, **k)
        else:
            def slowed(*a, _inner=inner, **k):
                time.sleep(delay)
                return _inner(*a, **k)

        setattr(runner, method, slowed)
    return f"{stage}+{ms}ms"


DEFAULT_REPORT_DIR = "ppbench-report"     # in the current directory, never inside the benchmark storage


class BenchSession:
    """Dataset + both models, loaded once; each duration measured once, on first use. Opened from
    the same RunConfig and the same functions as `ppbench run` (pipeline.open_data, open_models)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        run_data = pipeline.open_data(cfg, progress=False)
        self.root = run_data.root
        self.durations = list(cfg.durations)
        self.samples = {d: [s for s in run_data.samples if s.dataset == d] for d in self.durations}
        # Whole devices, every process (NVML), from before the models load to the session's end, as
        # `ppbench run` measures it: the report's whole-run peak.
        self.sampler = PeakSampler({cfg.torch_device, torch.device(cfg.drafter_device)}).__enter__()
        self.drafter, self.target = pipeline.open_models(cfg, pipeline.run_questions(run_data.samples))  # the drafter: a runner or a DrafterProcess
        injected = _inject_delay([self.drafter, self.target], cfg.inject_delay)
        self.meta = pipeline.run_meta(
            cfg.profile, cfg.torch_device, self.drafter, self.target, cfg.torch_dtype, cfg.quant,
            run_data.source, self.root, run_id=time.strftime("pytest-%Y%m%d-%H%M%S"),
            command="pytest (ppbench plugin)", injected_delay=injected,
            missing_datasets=run_data.missing, **pipeline.config_meta(cfg))
        self.record_meta = pipeline.record_fields(self.meta)
        self.out = Path(cfg.out or DEFAULT_REPORT_DIR)
        self.out.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = pipeline.bad_entry_records(run_data, self.record_meta)
        self._writer = RecordWriter(self.out / f"records-{self.meta['run_id']}.jsonl")
        for record in self.records:
            self._writer.write(record)
        self._stages: dict[str, list[dict]] = {}
        self._engine: dict[str, list[dict]] = {}
        self._warm = False
        self._curves = {}

    def _append(self, record: dict) -> None:
        self.records.append(record)
        self._writer.write(record)

    def _warm_up(self) -> None:
        if not self._warm:
            first = next(s for d in self.durations for s in self.samples[d])
            warm_up([self.drafter, self.target], first)
            self._warm = True

    def verify_curve(self, precision: str) -> dict:
        """The target's verify-cost curve in `precision` (harness/verify_cost.py), measured once per
        session on a target built for it and freed after; the session's own target is untouched."""
        from .verify_cost import curve_for_precision

        if precision not in self._curves:
            self._curves[precision] = curve_for_precision(
                self.cfg.profile, precision, device=self.target.device, decode_impl=self.cfg.decode,
                max_new_tokens=self.cfg.max_new_tokens, cache_len=self.cfg.cache_len,
                target_path=self.cfg.target_path)
        return self._curves[precision]

    def stages(self, duration: str) -> list[dict]:
        if duration not in self._stages:
            self._warm_up()
            sink = SimpleNamespace(write=self._append)
            before = len(self.records)
            run_stage_pipeline([self.drafter, self.target], self.samples[duration], sink,
                               max_new_tokens=self.cfg.max_new_tokens, meta=self.record_meta)
            self._stages[duration] = self.records[before:]
        return self._stages[duration]

    def engine(self, duration: str) -> list[dict]:
        if duration not in self._engine:
            self._warm_up()
            if not self._engine:
                warm_up_engine(self.drafter, self.target, self.samples[duration][0],
                               overlap=self.cfg.overlap)
            before = len(self.records)
            # Nightly: the overlapped run and its target-only baseline (sequential and assisted
            # are for `ppbench run`; they do not change between nights).
            for record in engine_records_for(self.drafter, self.target, self.samples[duration],
                                             max_new_tokens=self.cfg.max_new_tokens,
                                             sequential=False, overlap=self.cfg.overlap,
                                             meta=self.record_meta):
                self._append(record)
            self._engine[duration] = self.records[before:]
        return self._engine[duration]

    def close(self) -> None:
        self._writer.close()
        pipeline.close_models(self.drafter)
        self.sampler.__exit__(None, None, None)
        if self.sampler.devices:
            self.meta["gpu_memory"] = self.sampler.peaks()


def stage_seconds(records: list[dict], model: str, stage: str) -> tuple[list[float], list[str]]:
    ok = [r for r in records if r["model"] == model and not r.get("error")]
    return [r["stages_ms"][stage] / 1e3 for r in ok], [r["sample_id"] for r in ok]


def load_session_bounds(config, bench: BenchSession) -> dict | None:
    """The bounds file for this profile and device class; None (with a warning) when there is none
    yet, e.g. the first run on a new GPU, whose save is what `ppbench bounds derive` reads."""
    path = config.getoption("--ppbench-bounds")
    if path:
        return bounds.load_bounds_file(path)
    cls = bounds.device_class(bench.target.device)
    candidate = bounds.bounds_path(bench.cfg.profile, cls)
    if not candidate.exists():
        warnings.warn(f"no bounds file {candidate}: bounds not checked this session "
                      f"(derive one with `ppbench bounds derive SAVED.json`)")
        return None
    return bounds.load_bounds_file(candidate)


def finish_session(session) -> None:
    """Writes the summary report from this session's measurements, then runs the gate if asked."""
    config = session.config
    bench = getattr(config, "_ppbench_session", None)
    if bench is not None and bench.records:
        path = write_report(bench.records, bench.out, bench.meta)
        (bench.out / "meta.json").write_text(json.dumps(bench.meta, indent=2))
        _terminal(config, f"ppbench report: {path}")
    base = config.getoption("--ppbench-gate")
    saved = getattr(config, "_ppbench_saved_json", None)
    if base:
        if saved is None:
            _terminal(config, "ppbench gate: no benchmark JSON from this session "
                              "(run with --benchmark-autosave or --benchmark-json)")
            session.exitstatus = 1
            return
        thresholds = config.getoption("--ppbench-gate-thresholds") or str(GATE_THRESHOLDS)
        try:
            report = compare.gate(base, saved, thresholds if thresholds and thresholds != "none" else None)
        except PpbenchError as e:
            print(f"ppbench compare: error: {e}", file=sys.stderr)
            code = 2
        else:
            compare.print_report(report)
            code = 1 if report.regressed else 0
        if code != 0:
            _terminal(config, f"ppbench gate: exit {code} against {base}")
            session.exitstatus = code


def _terminal(config, line: str) -> None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(line)
    else:
        print(line)
