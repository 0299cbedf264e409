"""DSEC `events.h5` reader.

Layout (DSEC, https://dsec.ifi.uzh.ch/): `events/{x,y}` uint16, `events/t` microseconds
(uint32 in DSEC's files; read as int64) *relative to* `t_offset`, monotone non-decreasing, `events/p` uint8 (0/1), `ms_to_idx` uint64 with
ms_to_idx[ms] = first index whose t >= ms*1000, `t_offset` int64 scalar (absolute microseconds).
Real DSEC files are Blosc/ZSTD compressed, which h5py only reads once `hdf5plugin` is imported.

Clocks. DSEC has two: `events/t` counts µs from `t_offset` (the *relative* clock); `t_offset`, the
image `timestamps.txt` and the official `EventSlicer.get_events(t_start_us, t_end_us)` use the
*absolute* clock (relative + t_offset). ppbench's manifests and these functions take relative µs by
default (`clock="relative"`); pass `clock="absolute"` for times on the official API's clock, e.g.
image timestamps. Returned `Events.t` is always relative.

Windows are half-open [t_start, t_end). As in the official EventSlicer, a window that runs past the
last event is served with the events it has; a window wholly outside the recording (ending at or
before its first µs, or starting after its last event), or starting before t_offset, is an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc/ZSTD filters real DSEC files need)
import numpy as np

from harness.errors import DataError, EmptyWindowError

SENSOR_WIDTH = 640
SENSOR_HEIGHT = 480
CLOCKS = ("relative", "absolute")
_DATASETS = ("events/x", "events/y", "events/t", "events/p", "ms_to_idx", "t_offset")


@dataclass(frozen=True)
class Events:
    x: np.ndarray  # uint16 column
    y: np.ndarray  # uint16 row
    t: np.ndarray  # int64 µs relative to t_offset
    p: np.ndarray  # uint8 polarity, 1 = brighter

    def __len__(self) -> int:
        return len(self.t)


class EventReader:
    """An open events.h5; use as a context manager. Reads only the slices asked for."""

    def __init__(self, path: str | Path, *, sample: str | None = None,
                 width: int = SENSOR_WIDTH, height: int = SENSOR_HEIGHT):
        self.path, self.sample = Path(path), sample
        self.width, self.height = width, height
        if not self.path.is_file():
            raise self._error("events file not found")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:  # truncated / not HDF5 / missing filter
            raise self._error(f"cannot open events file as HDF5: {e}") from e
        try:
            self._open_datasets()
        except BaseException:
            self._f.close()
            raise

    def _open_datasets(self) -> None:
        # Corrupt object headers surface as KeyError/OSError here, not at h5py.File().
        missing = self._read(lambda: [name for name in _DATASETS if name not in self._f])
        if missing:
            raise self._error(f"not DSEC layout, missing datasets {missing}")
        self._x, self._y, self._t, self._p, self._ms_to_idx, t_offset = self._read(
            lambda: [self._f[name] for name in _DATASETS])
        not_1d = [n for n, d in zip(_DATASETS, (self._x, self._y, self._t, self._p, self._ms_to_idx))
                  if d.ndim != 1]
        if not_1d:
            raise self._error(f"not DSEC layout, datasets {not_1d} are not 1-D arrays")
        lengths = {len(d) for d in (self._x, self._y, self._t, self._p)}
        if len(lengths) != 1:
            raise self._error(f"events/x,y,t,p lengths differ: {sorted(lengths)}")
        self.n_events = lengths.pop()
        if self.n_events == 0:
            raise self._error("events file holds no events")
        self.t_offset = int(self._read(lambda: t_offset[()]))
        self.t_last = int(self._read(lambda: self._t[-1]))  # relative µs of the last event

    def _error(self, message: str, cls: type[DataError] = DataError) -> DataError:
        return cls(message, path=self.path, sample=self.sample)

    def _read(self, fn):
        # A truncated or corrupt file often opens fine and only fails when a chunk is read.
        try:
            return fn()
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
            raise self._error(f"cannot read events file: {e}") from e

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "EventReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _index_bounds(self, t_start: int, t_end: int) -> tuple[int, int]:
        """Conservative [lo, hi) from ms_to_idx: every event in [t_start, t_end) lies inside."""
        n_ms = len(self._ms_to_idx)
        ms_lo = t_start // 1000
        ms_hi = -(-t_end // 1000)  # ceil
        lo = int(self._read(lambda: self._ms_to_idx[ms_lo])) if ms_lo < n_ms else self.n_events
        hi = int(self._read(lambda: self._ms_to_idx[ms_hi])) if ms_hi < n_ms else self.n_events
        if not 0 <= lo <= hi <= self.n_events:
            raise self._error(f"corrupt ms_to_idx: [{lo}, {hi}) for {self.n_events} events")
        return lo, hi

    def check_window(self, t_start: int, t_end: int, *, clock: str = "relative") -> tuple[int, int]:
        """The window as relative µs; DataError if it is empty, starts before the recording, or lies
        wholly after its last event. A window running past the last event is kept (served with
        the events it has, like the official EventSlicer)."""
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
        if clock == "absolute":
            t_start, t_end = t_start - self.t_offset, t_end - self.t_offset
        t_start, t_end = int(t_start), int(t_end)
        if t_start >= t_end:
            raise self._error(f"empty time window [{t_start}, {t_end}) µs")
        if t_start < 0 or t_start > self.t_last:
            raise self._error(f"window [{t_start}, {t_end}) µs (relative) outside the recording "
                              f"[0, {self.t_last + 1})")
        return t_start, t_end

    def count(self, t_start: int, t_end: int) -> int:
        """How many events lie in [t_start, t_end) µs (relative); reads only the two boundary
        milliseconds of events/t, so it is cheap for long windows."""
        t_start, t_end = self.check_window(t_start, t_end)

        def first_at_or_after(t_us: int) -> int:
            lo, hi = self._index_bounds(t_us, t_us + 1)
            hi = max(hi, lo)
            t = self._read(lambda: self._t[lo:hi]).astype(np.int64)
            return lo + int(np.searchsorted(t, t_us, side="left"))
        return first_at_or_after(t_end) - first_at_or_after(t_start) if t_end <= self.t_last else \
            self.n_events - first_at_or_after(t_start)

    def slice(self, t_start: int, t_end: int, *, clock: str = "relative",
              allow_empty: bool = False) -> Events:
        """Events with t_start <= t < t_end µs on `clock` ("relative" to t_offset, the default, or
        "absolute", the official API's clock)."""
        t_start, t_end = self.check_window(t_start, t_end, clock=clock)
        lo, hi = self._index_bounds(t_start, t_end)
        t = self._read(lambda: self._t[lo:hi]).astype(np.int64)  # DSEC stores t as uint32
        if np.any(np.diff(t) < 0):
            raise self._error(f"events/t is not monotone non-decreasing in [{lo}, {hi})")
        a = lo + int(np.searchsorted(t, t_start, side="left"))
        b = lo + int(np.searchsorted(t, t_end, side="left"))
        if a == b and not allow_empty:
            raise self._error(f"no events in window [{t_start}, {t_end}) µs", EmptyWindowError)
        events = Events(x=self._read(lambda: self._x[a:b]), y=self._read(lambda: self._y[a:b]),
                        t=t[a - lo:b - lo], p=self._read(lambda: self._p[a:b]))
        if len(events) and (events.x.max() >= self.width or events.y.max() >= self.height):
            raise self._error(f"event coordinates outside the {self.width}x{self.height} sensor")
        if len(events) and events.p.max() > 1:
            raise self._error("event polarity not 0/1")
        return events


def read_events(path: str | Path, t_start: int, t_end: int, *, clock: str = "relative",
                sample: str | None = None, allow_empty: bool = False) -> Events:
    """One-shot window read: events with t_start <= t < t_end µs on `clock` (relative by default)."""
    with EventReader(path, sample=sample) as reader:
        return reader.slice(t_start, t_end, clock=clock, allow_empty=allow_empty)


def read_t_offset(path: str | Path, *, sample: str | None = None) -> int:
    with EventReader(path, sample=sample) as reader:
        return reader.t_offset
