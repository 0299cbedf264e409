"""The drafter in its own process: it builds the drafter's weights there, once per run, and serves
every mode that needs the drafter, so its Python never competes with the target's for one GIL.

Why: in one process the two pipelines share the GIL. The target's data loading decodes video
frames in a Python loop that takes the GIL back after every frame, so every millisecond the
drafter's thread spends in Python (its own loading, preprocessing, launching draft steps) delays
it; in another process the same work competes for cores only. The measurements (GPU runs, and a
CPU loader-contention probe) are in docs/results/README.md at commit 080f728 (*Previous* section);
thread vs process at alpha ~ 0: docs/results/README.md (*Current figures*).

`DrafterProcess(factory)` spawns a process that builds the drafter with `factory()` (it must be
picklable: a module-level function or a functools.partial of one). The parent never holds the
drafter's weights: the child serves
  * the drafter's five-stage records (run_sample: stages.run_sample on the child's runner),
  * its part of the sequential baseline (prefix_and_decode, on the parent's clock),
  * the parallel engine's drafter side (drafting -> RemoteDrafting, an engine.DrafterSide): the
    child runs stages 1-4 and hidden drafting while the parent runs the target; the two share
    `ready` / `on_gpu` / `host_done` events. A draft block of the speculative phase costs one pipe round trip:
    the parent knows the child's cache length, so it realigns without asking and the crop travels
    with the next block.
Assisted generation (transformers generate with assistant_model) needs both models in one process,
so with a drafter process it is recorded as Unsupported, saying why (baselines.assisted_generation).
Times are `time.perf_counter` ms, which is the system-wide monotonic clock on Linux and macOS, so
parent and child timestamps share one origin.

It is the default whenever the drafter runs on CUDA (runconfig.resolve_drafter_process). On one
shared GPU the two processes' CUDA contexts time-slice (without MPS), so the target's
high-priority stream no longer pre-empts the drafter; that is why yield-gpu stops the drafter
when the target's host stages (loading, preprocessing) end, with one step in flight.
"""
from __future__ import annotations

import multiprocessing as mp
import pickle
import traceback
from typing import Any, Callable

import torch

from . import stages
from .costmodel import Costs
from .engine import Drafting, Emitter, prefix_and_decode, realign_point
from .models.input_info import drafter_inputs


class DrafterProcessError(RuntimeError):
    pass


class DrafterProcess:
    """A drafter served by a child process: pass it as the drafter to stages.run_sample,
    baselines.sequential and engine.parallel_prefill_decode."""

    is_process = True
    role = "drafter"

    def __init__(self, factory: Callable[[], Any], *, start_timeout_s: float = 600.0):
        ctx = mp.get_context("spawn")     # never fork a process that may hold CUDA state
        self.ready, self.on_gpu, self.host_done = ctx.Event(), ctx.Event(), ctx.Event()
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(factory, child, self.ready, self.on_gpu, self.host_done),
                                 name="ppbench-drafter", daemon=True)
        self._proc.start()
        child.close()
        try:
            if not self._conn.poll(start_timeout_s):
                raise DrafterProcessError(f"drafter process did not start within {start_timeout_s:.0f} s")
            self.info = self._reply()
        except BaseException:
            self.close()
            raise
        self.name = self.info["name"]
        self.device = torch.device(self.info["device"])
        self.eos_token_id = self.info["eos_token_id"]
        self.decode_impl = self.info["decode_impl"]
        self.decode_setup = self.info["decode_setup"]
        self.modality, self.role = self.info["modality"], self.info["role"]
        self.input_info = self.info["input_info"]

    def memory_footprint(self) -> int:
        """The child's drafter's weights, in bytes (CausalLMRunner.memory_footprint, measured there)."""
        return self.info["memory_footprint"]

    # -- pipe ---------------------------------------------------------------------------------------
    def call(self, method: str, *args):
        self._send(method, *args)
        return self._reply()

    def _send(self, method: str, *args) -> None:
        try:
            self._conn.send((method, args))
        except (BrokenPipeError, OSError) as exc:
            raise DrafterProcessError(f"drafter process is gone ({self._exit_text()}): {exc}") from exc

    def _reply(self):
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise DrafterProcessError(f"drafter process died ({self._exit_text()})") from exc
        if status == "error":
            raise value
        return value

    def _exit_text(self) -> str:
        self._proc.join(timeout=1.0)
        code = self._proc.exitcode
        return "still running" if code is None else f"exit code {code}"

    # -- the engine's interface -----------------------------------------------------------------------
    def drafting(self, costs: Costs, select, alpha, reference, seed: int) -> "RemoteDrafting":
        self.call("drafting", select, alpha, None if reference is None else list(reference), seed)
        return RemoteDrafting(self, costs)

    def run_sample(self, sample, *, max_new_tokens: int = 50, stop_at_eos: bool = False,
                   meta: dict | None = None) -> dict:
        """The drafter's five-stage record of `sample` (stages.run_sample, run in the child)."""
        return self.call("run_sample", sample, max_new_tokens, stop_at_eos, meta)

    def prefix_and_decode(self, sample, n: int, *, stop_at_eos: bool = False, select=None, t0: float | None = None):
        """engine.prefix_and_decode run in the child, on the parent's clock (t0)."""
        return self.call("prefix_and_decode", sample, n, stop_at_eos, select, t0)

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(("close", ()))
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout=10.0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RemoteDrafting:
    """engine.DrafterSide for a drafter in a child process. start() returns at once (the child
    drafts), finish() collects what it drafted. realign() is computed here from the child's cache
    length, which every reply carries; the crop it implies is sent with the next draft_block() (or
    cache_len()), so a block costs one round trip."""

    def __init__(self, proc: DrafterProcess, costs: Costs):
        self.proc, self.costs, self.prompt_len = proc, costs, 0
        self.ready, self.on_gpu, self.host_done = proc.ready, proc.on_gpu, proc.host_done
        self._cache_len, self._crop_to = 0, None

    def start(self, sample, t0: float, n_max: int, *, yield_gpu: bool) -> None:
        self.proc.ready.clear()
        self.proc.on_gpu.clear()
        self.proc.host_done.clear()
        self.proc._send("start", sample, t0, n_max, yield_gpu)

    def finish(self):
        self.proc.ready.set()       # the target is ready (or failed): stop drafting in any case
        hidden, times, ends, self.prompt_len, self._cache_len, costs = self.proc._reply()
        self._add(costs)
        return hidden, times, ends

    def realign(self, out: list[int]) -> list[int]:
        self._cache_len = self._crop_to = realign_point(self._cache_len, self.prompt_len, out)
        return out[self._cache_len - self.prompt_len:]

    def draft_block(self, pending: list[int], gamma: int, pos: int, t0: float):
        tokens, times, costs, self._cache_len = self.proc.call("draft_block", self._crop_to, list(pending),
                                                               gamma, pos, t0)
        self._crop_to = None
        self._add(costs)
        return tokens, times

    def cache_len(self) -> int:
        """The child's own count (after any pending crop), so consistency checks see its cache."""
        self._cache_len = self.proc.call("cache_len", self._crop_to)
        self._crop_to = None
        return self._cache_len

    def _add(self, costs: dict) -> None:
        self.costs.draft_ms.extend(costs["draft_ms"])
        self.costs.hidden_ms.extend(costs["hidden_ms"])


# -- the child --------------------------------------------------------------------------------------
def _serve(factory, conn, ready, on_gpu, host_done) -> None:
    try:
        runner = factory()
        conn.send(("ok", {"name": runner.name, "device": str(runner.device),
                          "eos_token_id": runner.eos_token_id, "decode_impl": runner.decode_impl,
                          "decode_setup": runner.decode_setup, "modality": runner.modality, "role": runner.role,
                          "memory_footprint": runner.memory_footprint(), "input_info": _input_info(runner)}))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        _send_error(conn, exc)
        return
    side = None
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            return
        if method == "close":
            return
        try:
            with torch.inference_mode():
                if method == "drafting":
                    select, alpha, reference, seed = args
                    _sync(runner)     # steps abandoned by the previous run finish first
                    side = Drafting(runner, Emitter(select, alpha, reference, seed), Costs())
                    value = None
                elif method == "start":
                    sample, t0, n_max, yield_gpu = args
                    hidden, times, ends = side.stages_and_hidden(sample, t0, n_max, ready,
                                                                 on_gpu if yield_gpu else None, host_done)
                    value = (hidden, times, ends, side.prompt_len, side.cache_len(), _take_costs(side))
                elif method == "draft_block":
                    _crop(side, args[0])
                    tokens, times = side.draft_block(*args[1:])
                    value = (tokens, times, _take_costs(side), side.cache_len())
                elif method == "run_sample":
                    sample, max_new_tokens, stop_at_eos, meta = args
                    value = stages.run_sample(runner, sample, max_new_tokens=max_new_tokens,
                                              stop_at_eos=stop_at_eos, meta=meta)
                elif method == "prefix_and_decode":
                    sample, n, stop_at_eos, select, t0 = args
                    _sync(runner)
                    value = prefix_and_decode(runner, sample, n, stop_at_eos=stop_at_eos, t0=t0,
                                              **({"select": select} if select is not None else {}))
                elif method == "cache_len":
                    _crop(side, args[0])
                    value = side.cache_len()
                else:
                    raise DrafterProcessError(f"unknown drafter process call {method!r}")
            conn.send(("ok", value))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
            _send_error(conn, exc)


def _sync(runner) -> None:
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)


def _input_info(runner) -> dict | None:
    """What the drafter reads (models/input_info.py), for the parent's meta; None for runners
    that are not EventGPT's (the test suite's text runners)."""
    try:
        return drafter_inputs(runner)
    except AttributeError:
        return None


def _crop(side: Drafting, length: int | None) -> None:
    """The crop the parent's realign() implied (engine._realign_drafter, done late)."""
    if length is not None:
        side.runner.crop(side.cache, length)


def _take_costs(side: Drafting) -> dict:
    costs = {"draft_ms": list(side.costs.draft_ms), "hidden_ms": list(side.costs.hidden_ms)}
    side.costs.draft_ms.clear()
    side.costs.hidden_ms.clear()
    return costs


def _send_error(conn, exc: BaseException) -> None:
    """The exception itself when it survives a pickle round trip (a DataError keeps its type and
    its message naming the file and sample), else a DrafterProcessError carrying its type and
    message; either way with the child's traceback as a note."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(pickle.dumps(exc))
        exc.add_note(f"in the drafter process:\n{text}")
        conn.send(("error", exc))
    except Exception:  # noqa: BLE001 - does not pickle, or does not unpickle
        conn.send(("error", DrafterProcessError(f"in the drafter process: {type(exc).__name__}: {exc}\n{text}")))
