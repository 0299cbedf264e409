"""What a run prints besides its own progress: third-party noise off, failures listed."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Iterable

# Exit codes of `ppbench run` (README, "Exit codes").
EXIT_OK = 0
EXIT_CRASH = 1          # an unexpected error (a bug, or something we do not know how to name)
EXIT_USAGE = 2          # a wrong option or input the user can fix; one line, no traceback
EXIT_FAILURES = 3       # the run finished and wrote its report, but some records failed
EXIT_INTERRUPTED = 130  # Ctrl-C: the records so far are kept; the message says how to resume
SHOWN_FAILURES = 10


_interrupted = False


def _on_sigint(signum, frame):
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_kept():
    """Ctrl-C raises KeyboardInterrupt as usual, and is remembered: Python swallows the exception
    where the signal lands in a weakref callback or a __del__ (it only prints "Exception ignored"),
    and the run would then go on to the end; raise_if_interrupted() raises it again at the next
    record. Main thread only (elsewhere signals cannot be set): there it changes nothing."""
    global _interrupted
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _interrupted = False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted = False


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a Ctrl-C under interrupts_kept() was swallowed on its way up (once)."""
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise KeyboardInterrupt


def quiet_third_party(*, progress: bool = True) -> None:
    """No third-party log noise on a clean run; without progress, no third-party bars either.

    bitsandbytes warns on import on CPUs with AVX512-BF16 that an optional kernel package is
    missing (it falls back to its own kernel); transformers shows a bar per checkpoint load."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:   # pragma: no cover - transformers is a dependency
        return
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
        os.environ["TQDM_DISABLE"] = "1"


def failure_lines(records: Iterable[dict], limit: int = SHOWN_FAILURES) -> list[str]:
    """One line per failed record: dataset/sample, who, stage, and the message (which names the
    file); the first `limit`, then a count of the rest."""
    failed = [r for r in records if r.get("error") and (r["error"].get("type") != "Unsupported")]
    lines = []
    for r in failed[:limit]:
        e = r["error"]
        who = r.get("model") if r.get("kind") == "stages" else r.get("mode")
        lines.append(f"  {r.get('dataset')}/{r.get('sample_id')} {who} [{e.get('stage')}] "
                     f"{e.get('type')}: {' '.join(str(e.get('message', '')).split())[:300]}")
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more (report.md, section Failures)")
    return lines


def error(message: str) -> None:
    print(f"ppbench: error: {message}", file=sys.stderr)
