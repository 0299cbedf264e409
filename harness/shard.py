"""Sharded runs: one `ppbench run` spread over the processes that torchrun or accelerate launch.

    torchrun --nproc_per_node N -m harness run ...
    accelerate launch --num_processes N [--multi_gpu | --cpu] -m harness run ...

Every process (rank) loads its own models on its own GPU (or GPU pair with --gpus-per-process 2),
measures its share of the samples and appends its records to its own file. Rank 0 merges the
files into the run's records.jsonl and writes the one report. The out directory must be visible
to every rank (one host, or a shared filesystem across nodes); it holds

    records.jsonl, meta.json, report.md, ...     the merged run, as a one-process run writes them
    shards/<attempt>/plan.json                   who measures which samples in this launch, and why
    shards/<attempt>/rank-<r>.jsonl              rank r's records (append-only, fsync per record)
    shards/<attempt>/rank-<r>.json               rank r's host, devices, GPUs, state and error

An attempt is one launch. Resuming (--resume) reads every attempt's records: what is recorded is
done, and only the samples with records still missing are split over the new launch's ranks (its
process count may differ). The split is deterministic and balanced by expected cost (measured
per-sample costs per duration: harness/calibration/sample-costs.json, or --shard-costs).

A rank whose measuring raises (out of memory while loading, a crash in Python) records its error,
the others finish their shares, and rank 0 merges what exists and prints what is missing with the
resume command. A rank that dies outright (killed, segfault) makes the launcher stop the others;
each has its records on disk already, and rank 0 prints the same summary as it stops.

The process group (accelerate's PartialState over gloo) only exchanges the plan at the start;
nothing waits on a collective while measuring, so shares of different lengths never time out.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .calibration import SAMPLE_COSTS
from .console import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, quiet_third_party
from .data import DURATION_MS
from .engine_suite import samples_for_engine
from .errors import UsageError
from .records import RecordWriter, done_keys, iter_records, record_key, shard_files

DEFAULT_COSTS = SAMPLE_COSTS
SETTINGS_FIELDS = ("run_id", "profile", "dtype", "quant", "decode_impl")   # must agree across shards
POLL_S = 0.5


class ShardError(UsageError):
    """A sharded run or merge that cannot go on (one line, no traceback, exit 2)."""


class Terminated(BaseException):
    """The launcher stopped this process (SIGTERM), usually because another rank died."""


# -- where this process sits ------------------------------------------------------------------------
def launched(env=os.environ) -> bool:
    """Started by torchrun / accelerate launch (or mpirun under accelerate --cpu)."""
    if "LOCAL_RANK" in env and "WORLD_SIZE" in env:
        return True
    return any(int(env.get(k, "1") or 1) > 1 for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"))


def map_devices(device: str, drafter_device: str | None, *, local_rank: int, local_world_size: int,
                gpus_per_process: int, n_gpus: int) -> tuple[str, str | None]:
    """(target device, drafter device) of one rank: local rank r owns cuda:r (one GPU per process)
    or the pair cuda:2r (target) and cuda:2r+1 (drafter)."""
    if gpus_per_process not in (1, 2):
        raise ShardError(f"--gpus-per-process must be 1 or 2, got {gpus_per_process}")
    if device == "cpu" or (device == "auto" and n_gpus == 0):
        if gpus_per_process == 2:
            raise ShardError("--gpus-per-process 2 needs CUDA GPUs (this run is on CPU)")
        return "cpu", drafter_device
    if device not in ("auto", "cuda"):
        if local_world_size > 1:
            raise ShardError(f"--device {device}: {local_world_size} processes share this host; leave "
                             "--device at auto or cuda and each rank gets its own GPU (--gpus-per-process)")
        return device, drafter_device
    if drafter_device and (gpus_per_process == 2 or local_world_size > 1):
        raise ShardError(f"--drafter-device {drafter_device}: in a sharded run each rank's drafter GPU "
                         "comes from --gpus-per-process 2 (cuda:2r+1 for local rank r)")
    first = local_rank * gpus_per_process
    if first + gpus_per_process > n_gpus:
        raise ShardError(f"local rank {local_rank} needs cuda:{first}"
                         + (f" and cuda:{first + 1}" if gpus_per_process == 2 else "")
                         + f" but this host shows {n_gpus} GPU(s): processes per host x "
                           f"--gpus-per-process ({local_world_size} x {gpus_per_process}) must not exceed it")
    return f"cuda:{first}", (f"cuda:{first + 1}" if gpus_per_process == 2 else drafter_device)


def cpu_name() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def gpu_names(devices) -> dict[str, str]:
    """{device: GPU name} for the CUDA devices among `devices`."""
    return {d: torch.cuda.get_device_name(torch.device(d)) for d in dict.fromkeys(devices)
            if d and torch.device(d).type == "cuda"}


# -- what a launch measures -------------------------------------------------------------------------
def sample_key(sample) -> str:
    return f"{sample.dataset}/{sample.id}"


def expected_keys(sample, *, engine: bool, gammas, alphas, assisted: bool, records: dict) -> set:
    """The record keys a complete run writes for one sample (the order of engine_suite.engine_results).
    Simulated-alpha runs need the target-only reference: if that record failed they never run."""
    keys = {("stages", sample.dataset, sample.id, m) for m in ("drafter", "target")}
    if not engine:
        return keys
    ref = ("engine", sample.dataset, sample.id, "target_only", "0", None)
    keys |= {ref, ("engine", sample.dataset, sample.id, "sequential", "0", None)}
    ref_failed = ref in records and bool(records[ref].get("error"))
    for alpha in (None, *([] if ref_failed else alphas)):
        keys |= {("engine", sample.dataset, sample.id, "parallel", str(g), alpha) for g in gammas}
    if assisted:
        keys.add(("engine", sample.dataset, sample.id, "assisted", str(gammas[0]), None))
    return keys


def load_costs(path: str | os.PathLike | None = None) -> dict:
    """Expected per-sample cost per duration: {"costs_ms": {duration: {"stages", "engine"}}, "source"}.
    A records.jsonl gives its own measured costs (metrics.duration_costs_ms); a JSON file is a
    costs file as written by scripts/derive_sample_costs.py."""
    from .metrics import duration_costs_ms

    path = Path(path or DEFAULT_COSTS)
    try:
        if path.suffix == ".jsonl":
            return {"costs_ms": duration_costs_ms(iter_records(path)), "source": f"measured in {path}"}
        return json.loads(path.read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise ShardError(f"--shard-costs {path}: cannot read per-sample costs ({exc})") from None


def expected_cost(sample, engine: bool, costs: dict) -> float:
    """The sample's duration's measured cost; a duration the costs lack takes the nearest one's."""
    table = costs.get("costs_ms") or {}
    if not table:
        return 1.0
    ms = DURATION_MS.get(sample.dataset, 0)
    near = min(table, key=lambda d: (abs(DURATION_MS.get(d, 0) - ms), d))
    c = table[near]
    return float(c["stages"]) + (float(c["engine"]) if engine else 0.0)


def split(costs: list[float], n: int) -> tuple[list[list[int]], list[float]]:
    """Deterministic longest-first greedy split of items (by index) over n shards: each item, most
    expensive first (ties by index), goes to the least loaded shard (ties by rank). Each shard's
    items stay in their original order. Returns (indices per shard, expected load per shard)."""
    shares: list[list[int]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(n), key=lambda r: (loads[r], r))
        shares[r].append(i)
        loads[r] += costs[i]
    return [sorted(s) for s in shares], loads


# -- reading and merging shard files ----------------------------------------------------------------
# shard_files / has_shards live in records.py (the on-disk layout of a run's records), so that
# pipeline can ask without importing this module, which drives pipeline.run_main


def _read(path: Path) -> list[dict]:
    try:
        return list(iter_records(path))
    except ValueError as exc:   # a corrupt line before the last
        raise ShardError(f"merge refused: {exc}") from None


def _failed(rec: dict) -> bool:
    return bool(rec.get("error")) and rec["error"].get("type") != "Unsupported"


def collect(out: Path, settings: dict | None = None) -> tuple[dict, list[str]]:
    """All records of a run (records.jsonl, then every shard file by attempt), one per key: a failed
    record is replaced by a later one of its key (a resumed run retries it). Checked: a successful
    record's key again with different content, a record in a file of another rank or attempt,
    a shard file shorter than its status says, a sample outside its rank's planned share, or
    run settings (run_id, profile, dtype, quant, decode_impl) differing between records refuse the
    merge with a ShardError naming the file. Returns (records by key, notes)."""
    merged: dict[tuple, dict] = {}
    where: dict[tuple, Path] = {}
    notes: list[str] = []
    ref = dict(settings or {})

    def add(path: Path, rec: dict) -> None:
        for f in SETTINGS_FIELDS:
            if f in rec and rec[f] is not None:
                if ref.setdefault(f, rec[f]) != rec[f]:
                    raise ShardError(f"merge refused: {path} holds {f}={rec[f]!r} but the run has "
                                     f"{ref[f]!r} ({rec['dataset']}/{rec['sample_id']})")
        key = record_key(rec)
        if key in merged and merged[key] != rec and not _failed(merged[key]):
            raise ShardError(f"merge refused: {'/'.join(map(str, key))} was measured twice, differently, "
                             f"in {where[key]} and {path}")
        if key not in merged or _failed(merged[key]):
            merged[key], where[key] = rec, path

    for rec in _read(out / "records.jsonl"):
        add(out / "records.jsonl", rec)
    for path in shard_files(out):
        attempt, rank = path.parent.name, int(path.stem.split("-")[1])
        plan = _plan_of(path.parent)
        share = set(plan["shares"][rank]) if plan and rank < len(plan["shares"]) else None
        planned = set(plan["order"]) if plan else set()   # bad manifest entries are not planned
        recs = _read(path)
        status = _status(path.with_suffix(".json"))
        if status and status.get("records") is not None and len(recs) < status["records"]:
            raise ShardError(f"merge refused: {path} holds {len(recs)} records but its rank wrote "
                             f"{status['records']} ({path.with_suffix('.json')})")
        for rec in recs:
            if (rec.get("rank"), rec.get("shard_attempt")) != (rank, attempt):
                raise ShardError(f"merge refused: {path} holds a record of rank {rec.get('rank')}, attempt "
                                 f"{rec.get('shard_attempt')} ({rec['dataset']}/{rec['sample_id']})")
            k = f"{rec['dataset']}/{rec['sample_id']}"
            if share is not None and k in planned and k not in share:
                raise ShardError(f"merge refused: {path} holds {rec['dataset']}/{rec['sample_id']}, "
                                 f"which {attempt}'s plan gave to another rank")
            add(path, rec)
    return merged, notes


def _plan_of(attempt_dir: Path) -> dict | None:
    p = attempt_dir / "plan.json"
    return json.loads(p.read_text()) if p.exists() else None


def _status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


def merged_order(records: dict, plan_order: list[str]) -> list[dict]:
    """A one-process run's order: stage records, then engine records, by sample in plan order."""
    pos = {k: i for i, k in enumerate(plan_order)}
    return sorted(records.values(), key=lambda r: (r["kind"] != "stages",
                                                   pos.get(f"{r['dataset']}/{r['sample_id']}", len(pos))))


def write_merged(out: Path, records: list[dict]) -> Path:
    """records.jsonl rewritten atomically (tmp + fsync + rename) from the merged records."""
    path = out / "records.jsonl"
    tmp = path.with_name("records.jsonl.merging")
    tmp.unlink(missing_ok=True)
    with RecordWriter(tmp) as w:
        for r in records:
            w.write(r)
    os.replace(tmp, path)
    return path


def hosts_section(statuses: list[dict]) -> list[dict]:
    """Every host with its ranks and the GPUs (device, name) they used."""
    hosts: dict[str, dict] = {}
    for s in sorted(statuses, key=lambda s: s["rank"]):
        h = hosts.setdefault(s["host"], {"host": s["host"], "ranks": [], "devices": {}})
        h["ranks"] = sorted({*h["ranks"], s["rank"]})
        for role in ("target", "drafter"):
            d = s["devices"].get(role)
            if d:
                h["devices"].setdefault(d, (s.get("gpus") or {}).get(d) or s.get("cpu") or "CPU")
    return [{**h, "devices": [{"device": d, "name": n} for d, n in h["devices"].items()]}
            for h in hosts.values()]


# -- the launch -------------------------------------------------------------------------------------
@dataclass
class ShardRun:
    """This process's part of a sharded run; pipeline.run_main calls it at four points."""
    argv: list
    rank: int
    world_size: int
    local_rank: int
    host: str
    devices: dict
    gpus: dict
    run_id: str
    peers: list = field(default_factory=list)
    cfg: object = None                # the resolved runconfig.RunConfig
    attempt: str = ""
    out: Path | None = None
    plan: dict | None = None
    meta: dict | None = None
    records_written: int = 0
    plan_s: float | None = None       # the plan exchange (rank 0 reads the records, splits, broadcasts)
    measure_t0: float | None = None   # perf_counter when this rank started measuring its share

    @property
    def dir(self) -> Path:
        return self.out / "shards" / self.attempt

    @property
    def records_path(self) -> Path:
        return self.dir / f"rank-{self.rank:05d}.jsonl"

    @property
    def status_path(self) -> Path:
        return self.dir / f"rank-{self.rank:05d}.json"

    def record_fields(self) -> dict:
        """What every record of this rank says about where it was measured."""
        return {"rank": self.rank, "host": self.host, "devices": self.devices, "shard_attempt": self.attempt}

    # 1. start: process group, devices, GPU kinds, run id --------------------------------------------
    @classmethod
    def start(cls, raw: dict, argv: list, run_id: str) -> "ShardRun":
        """Joins the process group and sets this rank's devices in the raw options (before they
        are resolved, so the overlap policy and the drafter process follow the real devices)."""
        from accelerate import PartialState

        threads = torch.get_num_threads()   # what a plain run in this environment would use
        state = PartialState(cpu=True)      # gloo (or MPI): coordination only, no tensors
        torch.set_num_threads(threads)      # PartialState may reset it when OMP_NUM_THREADS is unset
        rank, world = state.process_index, state.num_processes
        local_rank = state.local_process_index
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        try:
            target, drafter = map_devices(str(raw["device"]), raw.get("drafter_device"), local_rank=local_rank,
                                          local_world_size=local_world,
                                          gpus_per_process=int(raw.get("gpus_per_process") or 1),
                                          n_gpus=n_gpus)
            error = None
        except ShardError as exc:
            target = drafter = None
            error = str(exc)
        devices = {"target": target, "drafter": drafter or target}
        gpus = gpu_names(devices.values()) if error is None else {}
        me = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "devices": devices,
              "gpus": gpus, "cpu_threads": torch.get_num_threads(), "error": error, "run_id": run_id}
        peers = [None] * world
        torch.distributed.all_gather_object(peers, me)
        errors = [f"rank {p['rank']} ({p['host']}): {p['error']}" for p in peers if p["error"]]
        if errors:
            _refuse(rank, errors[0])
        kinds = sorted({n for p in peers for n in p["gpus"].values()})
        if len(kinds) > 1 and not raw.get("allow_mixed_gpus"):
            _refuse(rank, f"this launch mixes GPU kinds ({', '.join(kinds)}); their timings are not "
                          "comparable in one report: pass --allow-mixed-gpus to measure anyway")
        raw["device"], raw["drafter_device"] = target, drafter
        if rank != 0:
            raw["no_progress"] = True
        return cls(argv=list(argv), rank=rank, world_size=world, local_rank=local_rank, host=me["host"],
                   devices=devices, gpus=gpus, run_id=peers[0]["run_id"], peers=peers)

    # 2. after the samples are known: rank 0 plans, everyone gets its share -------------------------
    def share(self, out: Path, samples: list, settings: dict):
        """(this rank's samples, its engine samples, done keys) for this launch."""
        self.out = out
        t0 = time.perf_counter()
        doc = None
        if self.rank == 0:
            try:
                doc = self._plan(samples, settings)
            except ShardError as exc:
                doc = {"error": str(exc)}
        box = [doc]
        torch.distributed.broadcast_object_list(box, src=0)
        doc = box[0]
        if "error" in doc:
            _refuse(self.rank, doc["error"])
        self.plan, self.attempt, self.run_id = doc["plan"], doc["plan"]["attempt"], doc["plan"]["run_id"]
        mine = set(self.plan["shares"][self.rank])
        engine_ids = set(self.plan["engine_samples"])
        own = [s for s in samples if sample_key(s) in mine]
        self.dir.mkdir(parents=True, exist_ok=True)
        self._status("running")
        torch.distributed.barrier()   # every rank has its status file before anyone measures
        self.plan_s, self.measure_t0 = time.perf_counter() - t0, time.perf_counter()
        return own, [s for s in own if sample_key(s) in engine_ids], doc["done"]

    def _plan(self, samples: list, settings: dict) -> dict:
        a = self.cfg
        previous = [p for p in (self.out / "shards").glob("*/plan.json")] if (self.out / "shards").exists() else []
        if previous and not a.resume:
            raise ShardError(f"{self.out} holds a sharded run; pass --resume or another --out")
        records = collect(self.out)[0] if a.resume else {}
        # a resumed run keeps its identity, even when its meta.json was never written
        run_id = next((r["run_id"] for r in records.values() if r.get("run_id")), settings.get("run_id"))
        self._check_gpu_kinds_of_earlier_attempts()
        gammas, alphas = a.gammas, a.alphas
        engine_ids = {sample_key(s) for s in samples_for_engine(samples, a.engine_samples)} \
            if a.engine else set()
        costs = load_costs(a.shard_costs)
        done = done_keys(records.values())   # failed records are retried, as in a one-process resume
        todo, cost = [], []
        for s in samples:
            k = sample_key(s)
            want = expected_keys(s, engine=k in engine_ids, gammas=gammas, alphas=alphas,
                                 assisted=a.assisted, records=records)
            if not want <= done:
                todo.append(k)
                cost.append(expected_cost(s, k in engine_ids, costs))
        shares, loads = split(cost, self.world_size)
        n = len(previous) + 1
        plan = {"attempt": f"a{n:03d}-n{self.world_size}", "run_id": run_id, "world_size": self.world_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": resume_command(self.argv, self.out),
                "order": [sample_key(s) for s in samples], "engine_samples": sorted(engine_ids),
                "shares": [[todo[i] for i in share] for share in shares],
                "expected_cost_ms": loads, "cost_source": costs.get("source", "equal costs"),
                "settings": settings, "ranks": self.peers,
                "expect": {"gammas": list(gammas), "alphas": list(alphas), "assisted": a.assisted}}
        d = self.out / "shards" / plan["attempt"]
        d.mkdir(parents=True, exist_ok=True)
        _write_json(d / "plan.json", plan)
        return {"plan": plan, "done": done}

    def _check_gpu_kinds_of_earlier_attempts(self) -> None:
        kinds = {n for p in self.peers for n in p["gpus"].values()}
        for path in sorted((self.out / "shards").glob("*/plan.json")):
            earlier = {n for p in json.loads(path.read_text()).get("ranks", []) for n in p["gpus"].values()}
            if earlier and kinds and earlier != kinds and not self.cfg.allow_mixed_gpus:
                raise ShardError(f"--resume on {', '.join(sorted(kinds))} but {path.parent.name} measured on "
                                 f"{', '.join(sorted(earlier))}; pass --allow-mixed-gpus to mix them")

    def writer(self) -> RecordWriter:
        run = self

        class CountingWriter(RecordWriter):
            def append(self, record):
                super().append(record)
                run.records_written += 1
                _test_kill(run.rank, run.records_written)

        return CountingWriter(self.records_path)

    def _status(self, state: str, error: str | None = None) -> None:
        _write_json(self.status_path, {
            "rank": self.rank, "world_size": self.world_size, "attempt": self.attempt, "host": self.host,
            "pid": os.getpid(), "devices": self.devices, "gpus": self.gpus, "cpu": cpu_name(),
            "cpu_threads": torch.get_num_threads(), "state": state, "error": error,
            "records": self.records_written, "samples": len(self.plan["shares"][self.rank]),
            "plan_s": self.plan_s,
            "measure_s": None if state == "running" else time.perf_counter() - self.measure_t0,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")})

    # 3. the rank's whole life: measure its share, then (rank 0) wait, merge, report -----------------
    def run(self, measure) -> int:
        """measure(self) runs pipeline's body for this rank's share. Returns the exit code."""
        previous = signal.signal(signal.SIGTERM, _terminated)
        try:
            try:
                code = measure(self)
                state, error = ("interrupted", "interrupted (Ctrl-C)") if code == EXIT_INTERRUPTED else ("done", None)
            except Terminated:
                if self.plan is not None:
                    self._status("terminated", "stopped by the launcher (another rank failed)")
                return self._stopped(143)
            except KeyboardInterrupt:
                if self.plan is None:
                    raise
                state, error = "interrupted", "interrupted (Ctrl-C)"
            except (Exception, SystemExit) as exc:   # the rank fails; the others go on
                if self.plan is None:
                    raise   # before the plan: nothing measured, the launch ends here
                state, error = "failed", f"{type(exc).__name__}: {_one_line(exc)}"
                print(f"rank {self.rank} ({self.host}) failed: {error}", file=sys.stderr)
            if self.plan is None:   # an empty launch or nothing to do
                return code
            self._status(state, error)
            if state == "interrupted":
                return self._stopped(EXIT_INTERRUPTED)
            if self.rank != 0:
                if state == "failed":
                    self._wait_for("merged.json")
                return EXIT_OK if state == "done" else EXIT_FAILURES
            self._wait_for_ranks()
            return finish(self.out, meta=self.meta, plan=self.plan)
        except Terminated:
            return self._stopped(143)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    def _stopped(self, code: int) -> int:
        if self.rank == 0 and self.plan is not None:
            print(summary(self.out, self.plan, *collect_quiet(self.out)), file=sys.stderr)
        return code

    def _wait_for_ranks(self) -> None:
        while True:
            states = [(_status(self.dir / f"rank-{r:05d}.json") or {}).get("state") for r in range(self.world_size)]
            if all(s in ("done", "failed", "terminated", "interrupted") for s in states):
                return
            time.sleep(POLL_S)

    def _wait_for(self, name: str) -> None:
        while not (self.dir / name).exists():
            time.sleep(POLL_S)


def _terminated(signum, frame):
    raise Terminated()


def _refuse(rank: int, message: str):
    """Every rank stops; rank 0 says why (one line), the others quietly."""
    if rank == 0:
        raise ShardError(message)
    raise SystemExit(EXIT_USAGE)


def main(raw: dict, argv: list) -> int:
    """`ppbench run` under torchrun / accelerate launch (cli): this process's share of the run."""
    import datetime as _dt

    from . import pipeline, runconfig

    if len(runconfig.parse_quants(raw.get("quant") or "nf4")) > 1:   # refused before the process group starts
        raise UsageError(pipeline.SHARDED_PRECISIONS)
    run = ShardRun.start(raw, argv, _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    run.cfg = runconfig.resolve(raw, side="cli")
    quiet_third_party(progress=not run.cfg.no_progress)
    return run.run(lambda r: pipeline.run_main(r.cfg, argv, sharded=r))


def _one_line(exc: BaseException) -> str:
    text = str(exc.code if isinstance(exc, SystemExit) else exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _test_kill(rank: int, written: int) -> None:
    """The CPU tests' stand-ins for a failing rank, unset in real runs: PPBENCH_TEST_KILL=RANK:N
    kills this process (SIGKILL) after its N-th record (a rank that dies outright);
    PPBENCH_TEST_RAISE=RANK:N raises there (a rank whose measuring fails in Python)."""
    if os.environ.get("PPBENCH_TEST_KILL") == f"{rank}:{written}":
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("PPBENCH_TEST_RAISE") == f"{rank}:{written}":
        raise RuntimeError(f"PPBENCH_TEST_RAISE: rank {rank} fails after its record {written}")


# -- the end: merge, report, summary ----------------------------------------------------------------
def collect_quiet(out: Path) -> tuple[dict, list]:
    try:
        return collect(out)
    except ShardError as exc:
        return {}, [str(exc)]


def missing_keys(out: Path, plan: dict, records: dict) -> tuple[set, list[str]]:
    """Keys no attempt recorded among what every attempt planned, and the samples they belong to."""
    a = plan["expect"]
    gammas = tuple(g if g == "adaptive" else int(g) for g in a["gammas"])
    engine_ids = set(plan["engine_samples"])
    missing, samples = set(), []
    done = done_keys(records.values())
    for k in plan["order"]:
        dataset, sid = k.split("/", 1)
        s = _Key(dataset, sid)
        want = expected_keys(s, engine=k in engine_ids, gammas=gammas, alphas=tuple(a["alphas"]),
                             assisted=a["assisted"], records=records)
        lack = want - done
        if lack:
            missing |= lack
            samples.append(k)
    return missing, samples


@dataclass(frozen=True)
class _Key:
    dataset: str
    id: str


def summary(out: Path, plan: dict, records: dict, notes: list[str]) -> str:
    """What the run holds, which ranks failed, what is missing and the command that resumes it."""
    missing, samples = missing_keys(out, plan, records)
    lines = [f"sharded run {out}: {len(records)} records from {plan['world_size']} processes ({plan['attempt']})"]
    for p in sorted((out / "shards" / plan["attempt"]).glob("rank-*.json")):
        s = _status(p) or {}
        if s.get("state") != "done":
            lines.append(f"  rank {s.get('rank')} on {s.get('host')} ({s.get('devices', {}).get('target')}): "
                         f"{s.get('state')}" + (f": {s['error']}" if s.get("error") else "")
                         + f"; {s.get('records')} records kept")
    lines += [f"  {n}" for n in notes]
    if missing:
        shown = ", ".join(samples[:8]) + (f" and {len(samples) - 8} more" if len(samples) > 8 else "")
        lines += [f"missing: {len(missing)} records (not measured or failed) of {len(samples)} samples ({shown})",
                  f"resume with: {plan['command']}"]
    else:
        lines.append("nothing missing")
    return "\n".join(lines)


def finish(out: Path, meta: dict | None, plan: dict) -> int:
    """Rank 0's end (and `ppbench merge`): merge, write meta.json and the report, print the summary.
    Exit code 0 only when nothing is missing and something was measured."""
    from .pipeline import _write_report

    t0 = time.perf_counter()
    records, notes = collect(out)
    path = write_merged(out, merged_order(records, plan["order"]))
    statuses = [s for p in sorted((out / "shards").glob("*/rank-*.json")) if (s := _status(p))]
    meta = dict(meta or _status(out / "meta.json") or {})
    meta["shards"] = {"processes": plan["world_size"], "attempts": sorted(p.name for p in (out / "shards").iterdir()
                                                                          if p.is_dir()),
                      "hosts": hosts_section([s for s in statuses if s.get("attempt") == plan["attempt"]]
                                             or statuses),
                      "all_hosts": hosts_section(statuses)}
    _write_json(out / "meta.json", meta)
    code = _write_report(path, out, meta)
    text = summary(out, plan, records, notes)
    print(text, file=sys.stderr if "missing:" in text else sys.stdout)
    (out / "shards" / plan["attempt"] / "merged.json").write_text(json.dumps(
        {"records": len(records), "merge_and_report_s": time.perf_counter() - t0}))
    return code if "missing:" not in text else EXIT_FAILURES


def latest_plan(out: Path) -> dict:
    plans = sorted((out / "shards").glob("*/plan.json"))
    if not plans:
        raise ShardError(f"{out} holds no sharded run (no shards/*/plan.json)")
    return json.loads(plans[-1].read_text())


def merge_main(args) -> int:
    """`ppbench merge OUT`: merge a sharded run's files and write its report (after a failed launch)."""
    out = Path(args.out)
    return finish(out, meta=None, plan=latest_plan(out))


def resume_command(argv: list, out: Path) -> str:
    """The exact command that resumes this run under the same launcher and process count."""
    argv = list(argv)
    if "--out" not in argv and not any(a.startswith("--out=") for a in argv):
        argv += ["--out", str(out)]
    if "--resume" not in argv:
        argv.append("--resume")
    accelerate = any(k.startswith("ACCELERATE_") for k in os.environ)
    prog = Path(sys.argv[0]).name
    target = (["-m", "harness"] if prog in ("__main__.py", "harness")
              else ["--no_python" if accelerate else "--no-python", prog])
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = max(1, world // max(local, 1))
    if accelerate:
        launcher = ["accelerate", "launch", "--num_processes", str(world)]
        if nodes > 1:
            launcher += ["--num_machines", str(nodes), "--machine_rank", "<this node's rank>",
                         "--main_process_ip", os.environ.get("MASTER_ADDR", "<rank 0 host>"),
                         "--main_process_port", os.environ.get("MASTER_PORT", "29500")]
        if "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ:
            launcher.append("--cpu")        # MPI-launched CPU processes (accelerate's --cpu + mpirun)
        elif world > 1:
            launcher.append("--multi_gpu")  # torch.distributed processes (also with --device cpu: gloo)
    else:
        launcher = ["torchrun", "--nproc_per_node", str(local)]
        if nodes > 1:
            launcher += ["--nnodes", str(nodes), "--node_rank", "<this node's rank>",
                         "--master_addr", os.environ.get("MASTER_ADDR", "<rank 0 host>"),
                         "--master_port", os.environ.get("MASTER_PORT", "29500")]
        else:
            launcher.append("--standalone")
    return " ".join(shlex.quote(x) if not x.startswith("<") else x for x in launcher + target + argv)
