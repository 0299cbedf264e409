"""Synthetic DSEC-format dataset: determinism, DSEC layout, manifests, event simulation, cache."""
from __future__ import annotations

import json

import h5py
import hdf5plugin  # noqa: F401  (plain h5py + the plugin is all a DSEC user needs)
import numpy as np
import pytest

import harness.data.synthetic as sd
from harness.data import DURATION_MS, load_samples

SMALL = dict(n_sequences=1, sequence_s=2.5, durations=["500ms", "1s", "2s"])


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return sd.build_dataset(tmp_path_factory.mktemp("a") / "root", seed=5, samples_per_duration=4, **SMALL)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_identical_bytes(small_root, tmp_path):
    again = _files(sd.build_dataset(tmp_path / "again", seed=5, samples_per_duration=4, **SMALL))
    first = _files(small_root)
    assert sorted(first) == sorted(again)
    assert {"synth_city_00_a/video.mp4", "synth_city_00_a/events/left/events.h5",
            "synth_city_00_a/timestamps.txt", "manifests/1s.json"} <= set(first)
    for name in first:
        assert first[name] == again[name], f"{name} differs between builds with the same seed"


def test_different_seed_differs(small_root, tmp_path):
    other = _files(sd.build_dataset(tmp_path / "other", seed=6, samples_per_duration=4, **SMALL))
    assert other["synth_city_00_a/events/left/events.h5"] != _files(small_root)["synth_city_00_a/events/left/events.h5"]


def test_h5_is_dsec_layout(small_root):
    with h5py.File(small_root / "synth_city_00_a/events/left/events.h5", "r") as f:
        assert {k: f[f"events/{k}"].dtype for k in "xytp"} == {
            "x": np.uint16, "y": np.uint16, "t": np.int64, "p": np.uint8}
        x, y, t, p = (f[f"events/{k}"][:] for k in "xytp")
        ms_to_idx, t_offset = f["ms_to_idx"][:], int(f["t_offset"][()])
        assert f["ms_to_idx"].dtype == np.uint64
    assert len(t) > 10_000 and t_offset != 0
    assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] <= 2_500_000
    assert x.max() < 640 and y.max() < 480 and set(np.unique(p)) == {0, 1}
    for ms in range(0, len(ms_to_idx), 37):  # definition, checked by brute force on a stride
        assert ms_to_idx[ms] == int(np.argmax(t >= ms * 1000)) if (t >= ms * 1000).any() else len(t)
    assert ms_to_idx[-1] == len(t)


def test_timestamps_and_video_agree(small_root):
    seq = small_root / "synth_city_00_a"
    ts = np.loadtxt(seq / "timestamps.txt", dtype=np.int64)
    with h5py.File(seq / "events/left/events.h5", "r") as f:
        t_offset = int(f["t_offset"][()])
    assert ts[0] == t_offset and np.all(np.diff(ts) == 50_000) and len(ts) == 51


def test_manifests(small_root):
    for duration in SMALL["durations"]:
        doc = json.loads((small_root / "manifests" / f"{duration}.json").read_text())
        assert doc["duration"] == duration
        samples = load_samples(small_root, duration)
        assert len(samples) == 4 and len({s.id for s in samples}) == 4
        for s in samples:
            assert s.t1_us - s.t0_us == DURATION_MS[duration] * 1000
            assert 0 <= s.t0_us and s.t1_us <= 2_500_001
            assert s.question in sd.QUESTIONS and s.events_path.is_file() and s.video_path.is_file()
    assert len(load_samples(small_root, "1s", limit=2)) == 2


def test_seed_sample_counts_mapping(tmp_path):
    assert list(sd.SEED_SAMPLE_COUNTS.values()) == [2220, 1100, 540, 260, 193, 117, 93, 23, 38]
    root = sd.build_dataset(tmp_path / "r", samples_per_duration={"500ms": 3, "1s": 1}, n_sequences=2,
                            sequence_s=1.2, durations=["500ms", "1s"])
    assert [len(load_samples(root, d)) for d in ("500ms", "1s")] == [3, 1]
    assert {s.sequence for s in load_samples(root, "500ms")} == {"synth_city_00_a", "synth_city_01_a"}


def test_duration_longer_than_sequence_rejected(tmp_path):
    with pytest.raises(ValueError, match="shorter than duration"):
        sd.build_dataset(tmp_path / "r", n_sequences=1, sequence_s=1.0, durations=["2s"])
    assert not (tmp_path / "r").exists() and not list(tmp_path.iterdir())  # tmp dir cleaned up


def test_step_events_interpolates_threshold_crossings():
    C = np.full((1, 2), 0.2, np.float32)
    L0 = np.zeros((1, 2), np.float32)
    L1 = np.array([[0.5, -0.25]], np.float32)  # +2 crossings (0.2, 0.4), -1 crossing (-0.2)
    ref = L0.copy()
    x, y, t, p = sd.step_events(L0, L1, ref, C, t0_us=1000, dt_us=1000)
    assert x.tolist() == [0, 0, 1] and p.tolist() == [1, 1, 0] and y.tolist() == [0, 0, 0]
    np.testing.assert_allclose(t, [1400, 1800, 1800], atol=1)  # floor of float32 fractions
    np.testing.assert_allclose(ref, [[0.4, -0.2]], atol=1e-6)
    # no change -> no events; a small further rise past the next level -> one more event
    assert len(sd.step_events(L1, L1, ref, C, 2000, 1000)[0]) == 0
    assert sd.step_events(L1, np.array([[0.61, -0.25]], np.float32), ref, C, 2000, 1000)[3].tolist() == [1]


def test_ensure_default_dataset_builds_once_and_rebuilds_half_built(tmp_path, monkeypatch):
    calls = []
    real = sd.build_dataset

    def small_build(root, **kw):
        calls.append(root)
        return real(root, **kw, n_sequences=1, sequence_s=0.6, durations=["500ms"])

    monkeypatch.setenv("PPBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(sd, "build_dataset", small_build)
    root = sd.ensure_default_dataset(progress=False)
    assert root == tmp_path / "dataset-v1-seed0" and (root / sd.MARKER).is_file()
    assert sd.ensure_default_dataset(progress=False) == root and len(calls) == 1
    (root / sd.MARKER).unlink()  # simulate a build killed before its marker
    sd.ensure_default_dataset(progress=False)
    assert len(calls) == 2 and (root / sd.MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["dataset-v1-seed0"]  # no tmp dirs left


def test_progress_callback(tmp_path):
    seen = []
    sd.build_dataset(tmp_path / "r", n_sequences=2, sequence_s=0.6, durations=["500ms"],
                     progress=lambda done, total, what: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
