"""DSEC reader: the ms_to_idx + searchsorted slicer equals a brute-force mask."""
from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.data.synthetic import write_events_h5
from harness.data.dsec import EventReader, read_events
from harness.errors import DataError, EmptyWindowError


@st.composite
def streams(draw):
    n = draw(st.integers(1, 400))
    # Gaps of 0 (same-µs events), small, and multi-ms jumps, so ms_to_idx has repeated entries.
    gaps = draw(st.lists(st.sampled_from([0, 0, 1, 7, 999, 1000, 1001, 3500]), min_size=n, max_size=n))
    t = np.cumsum(np.asarray(gaps, dtype=np.int64)) + draw(st.integers(0, 2500))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(0, 640, n).astype(np.uint16)
    y = rng.integers(0, 480, n).astype(np.uint16)
    p = rng.integers(0, 2, n).astype(np.uint8)
    t_offset = draw(st.sampled_from([0, 1, 49_599_300_523]))
    return x, y, t, p, t_offset


def _edge(draw, t: np.ndarray) -> int:
    end = int(t[-1]) + 1
    kind = draw(st.sampled_from(["event", "ms", "any"]))
    if kind == "event":
        return int(draw(st.sampled_from(list(t)))) + draw(st.sampled_from([-1, 0, 1]))
    if kind == "ms":
        return 1000 * draw(st.integers(0, end // 1000 + 1))
    return draw(st.integers(0, end))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), data=st.data(), relative=st.booleans(), compression=st.booleans())
def test_slice_equals_brute_force_mask(stream, data, relative, compression):
    """A window [a, b) on either clock returns exactly the events a brute-force mask selects, also
    when it runs past the last event (served with the events it has, like DSEC's EventSlicer)."""
    x, y, t, p, t_offset = stream
    end = int(t[-1]) + 1
    a = min(max(_edge(data.draw, t), 0), end - 1)
    b = max(_edge(data.draw, t) + data.draw(st.sampled_from([0, 0, 5000])), a + 1)
    clock = "relative" if relative else "absolute"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "events.h5"
        write_events_h5(path, x, y, t, p, t_offset, compression=compression)
        shift = 0 if relative else t_offset
        mask = (t >= a) & (t < b)
        if not mask.any():
            with pytest.raises(EmptyWindowError):
                read_events(path, a + shift, b + shift, clock=clock)
            got = read_events(path, a + shift, b + shift, clock=clock, allow_empty=True)
        else:
            got = read_events(path, a + shift, b + shift, clock=clock)
    np.testing.assert_array_equal(got.t, t[mask])
    np.testing.assert_array_equal(got.x, x[mask])
    np.testing.assert_array_equal(got.y, y[mask])
    np.testing.assert_array_equal(got.p, p[mask])


def test_reader_reads_only_the_slice(tmp_path, monkeypatch):
    # A window near the end of a long stream must not touch the start of events/t.
    t = np.arange(200_000, dtype=np.int64) * 10  # 2 s at 100 kHz
    z = np.zeros_like(t)
    path = tmp_path / "events.h5"
    write_events_h5(path, z.astype(np.uint16), z.astype(np.uint16), t, z.astype(np.uint8), 5)
    reads = []
    orig = h5py.Dataset.__getitem__

    def spy(self, key):
        reads.append((self.name, key))
        return orig(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    with EventReader(path) as r:
        ev = r.slice(1_500_000, 1_550_000)
    assert len(ev) == 5000 and ev.t[0] == 1_500_000 and ev.t[-1] == 1_549_990
    t_reads = [k for name, k in reads if name == "/events/t" and isinstance(k, slice)]
    assert t_reads and all(k.start >= 149_000 and k.stop <= 156_000 for k in t_reads)


def test_reader_attributes(tmp_path):
    t = np.array([3, 1000, 1000, 2999], dtype=np.int64)
    z = np.zeros(4, np.uint16)
    write_events_h5(tmp_path / "e.h5", z, z, t, z.astype(np.uint8), 123_456_789, compression=False)
    with EventReader(tmp_path / "e.h5") as r:
        assert (r.t_offset, r.t_last, r.n_events) == (123_456_789, 2999, 4)
        assert len(r.slice(123_456_789 + 1000, 123_456_789 + 1001, clock="absolute")) == 2


def test_window_past_the_last_event_is_served_and_one_wholly_outside_is_refused(tmp_path):
    """DSEC's EventSlicer serves a window that ends after the last event with the events it has;
    a window that starts after the last event, or before t_offset, is outside the recording."""
    t = np.array([3, 1000, 1000, 2999], dtype=np.int64)
    z = np.zeros(4, np.uint16)
    write_events_h5(tmp_path / "e.h5", z, z, t, z.astype(np.uint8), 7_000, compression=False)
    with EventReader(tmp_path / "e.h5", sample="s1") as r:
        assert list(r.slice(1000, 50_000).t) == [1000, 1000, 2999]
        assert list(r.slice(7_000 + 2_000, 7_000 + 90_000, clock="absolute").t) == [2999]
        for window in ((3000, 9000), (-5, 10)):
            with pytest.raises(DataError, match=r"outside the recording.*sample s1.*e\.h5"):
                r.slice(*window)
        with pytest.raises(ValueError, match="clock must be one of"):
            r.slice(0, 10, clock="gps")
