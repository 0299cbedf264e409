"""Every kind of bad input gives a typed DataError naming the file and the sample."""
from __future__ import annotations

import dataclasses
import json
import shutil

import h5py
import numpy as np
import pytest

from harness.data.synthetic import VideoWriter, build_dataset
from harness.data import iter_loaded, load_event_images, load_samples, load_video_frames
from harness.errors import DataError, EmptyWindowError


@pytest.fixture(scope="module")
def good_root(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("good") / "root", seed=1, samples_per_duration=2,
                         n_sequences=1, sequence_s=2.5, durations=["500ms", "1s"])


@pytest.fixture
def root(good_root, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(good_root, tmp_path / "root")


@pytest.fixture
def sample(root):
    return load_samples(root, "1s")[0]


def _expect(exc, fn, sample, filename, match):
    with pytest.raises(exc, match=match) as e:
        fn(sample)
    assert e.value.sample == sample.id, "error must name the sample"
    assert e.value.path is not None and e.value.path.endswith(filename), "error must name the file"
    assert sample.id in str(e.value) and filename in str(e.value)
    return e.value


def _rewrite_h5(path, **overrides):
    with h5py.File(path, "r") as f:
        data = {k: f[k][()] for k in ("events/x", "events/y", "events/t", "events/p", "ms_to_idx", "t_offset")}
    data.update(overrides)
    path.unlink()
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f.create_dataset(k, data=v)


def test_good_sample_loads(sample):
    assert len(load_event_images(sample)) == 5 and load_video_frames(sample).shape[0] == 8


def test_missing_events_file(sample):
    sample.events_path.unlink()
    _expect(DataError, load_event_images, sample, "events.h5", "not found")
    _expect(DataError, load_video_frames, sample, "events.h5", "not found")  # t_offset lives there


def test_truncated_h5(sample):
    raw = sample.events_path.read_bytes()
    sample.events_path.write_bytes(raw[: len(raw) // 2])
    _expect(DataError, load_event_images, sample, "events.h5", "events file")


def test_not_an_h5(sample):
    sample.events_path.write_bytes(b"this is not hdf5" * 100)
    _expect(DataError, load_event_images, sample, "events.h5", "cannot open")


def test_corrupt_chunk_data(sample):
    # Damage the compressed payload but keep the HDF5 superblock and object headers intact.
    raw = bytearray(sample.events_path.read_bytes())
    rng = np.random.default_rng(0)
    lo = len(raw) // 4
    raw[lo:] = rng.integers(0, 256, len(raw) - lo, dtype=np.uint8).tobytes()
    sample.events_path.write_bytes(bytes(raw))
    _expect(DataError, load_event_images, sample, "events.h5", "events file")


@pytest.mark.parametrize("dropped", ["events/p", "ms_to_idx", "t_offset"])
def test_missing_dataset(sample, dropped):
    _rewrite_h5(sample.events_path, **{dropped: None})
    _expect(DataError, load_event_images, sample, "events.h5", f"missing datasets.*{dropped}")


def test_non_monotonic_t(sample):
    with h5py.File(sample.events_path, "r") as f:
        t = f["events/t"][()]
    window = np.flatnonzero((t >= sample.t1_us - 50_000) & (t < sample.t1_us))
    t[window[10]], t[window[20]] = t[window[20]] + 5, t[window[10]]
    _rewrite_h5(sample.events_path, **{"events/t": t})
    _expect(DataError, load_event_images, sample, "events.h5", "not monotone")


def test_coordinates_outside_sensor(sample):
    with h5py.File(sample.events_path, "r") as f:
        x = f["events/x"][()]
    x[:] = 700
    _rewrite_h5(sample.events_path, **{"events/x": x})
    _expect(DataError, load_event_images, sample, "events.h5", "outside the 640x480 sensor")


@pytest.mark.parametrize("t0,t1", [(-100_000, 900_000), (2_000_000, 3_000_000), (10**9, 10**9 + 10**6)])
def test_window_outside_recording(sample, t0, t1):
    bad = dataclasses.replace(sample, t0_us=t0, t1_us=t1)
    _expect(DataError, load_event_images, bad, "events.h5", "outside the recording")


def test_empty_window(sample):
    with h5py.File(sample.events_path, "r") as f:
        t = f["events/t"][()]
    keep = ~((t >= sample.t1_us - 50_000) & (t < sample.t1_us))
    with h5py.File(sample.events_path, "r") as f:
        cols = {k: f[k][()][keep] for k in ("events/x", "events/y", "events/t", "events/p")}
    t = cols["events/t"]
    cols["ms_to_idx"] = np.searchsorted(t, np.arange(t[-1] // 1000 + 2) * 1000).astype(np.uint64)
    _rewrite_h5(sample.events_path, **cols)
    _expect(EmptyWindowError, load_event_images, sample, "events.h5", "no events")


def test_missing_video(sample):
    sample.video_path.unlink()
    _expect(DataError, load_video_frames, sample, "video.mp4", "not found")


def test_corrupt_video(sample):
    sample.video_path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _expect(DataError, load_video_frames, sample, "video.mp4", "decode")


def test_truncated_video(sample):
    raw = sample.video_path.read_bytes()
    sample.video_path.write_bytes(raw[: len(raw) // 3])
    _expect(DataError, load_video_frames, sample, "video.mp4", "decode|no frames")


def test_video_shorter_than_timestamps(sample):
    # A valid mp4 with only the first 5 frames while timestamps.txt lists 51.
    writer = VideoWriter(sample.video_path, 20, 320, 240)
    for _ in range(5):
        writer.write(np.zeros((240, 320, 3), np.uint8))
    writer.close()
    late = load_samples(sample.root, "1s")
    late = max(late, key=lambda s: s.t0_us)
    assert late.t0_us > 250_000
    _expect(DataError, load_video_frames, dataclasses.replace(late, id=sample.id), "video.mp4",
            "no frames at")


def test_too_short_clip(sample):
    bad = dataclasses.replace(sample, t1_us=sample.t0_us + 300_000)  # 6 frames at 20 fps
    _expect(DataError, load_video_frames, bad, "video.mp4", "distinct frames")


def test_bad_timestamps(sample):
    sample.timestamps_path.write_text("100\n50\n")
    _expect(DataError, load_video_frames, sample, "timestamps.txt", "strictly increasing")
    sample.timestamps_path.write_text("abc\n")
    _expect(DataError, load_video_frames, sample, "timestamps.txt", "unreadable")
    sample.timestamps_path.unlink()
    _expect(DataError, load_video_frames, sample, "timestamps.txt", "not found")


def test_bad_manifests(root):
    with pytest.raises(DataError, match="not found") as e:
        load_samples(root, "4s")
    assert e.value.path.endswith("4s.json")
    (root / "manifests" / "1s.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        load_samples(root, "1s")
    doc = {"samples": [{"id": "a", "sequence": "s", "t0_us": 5, "t1_us": 5, "question": "q"}]}
    (root / "manifests" / "1s.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="bad clip") as e:
        load_samples(root, "1s")
    assert e.value.sample == "a"
    doc = {"samples": [{"id": "b", "sequence": "s", "t0_us": 5}]}
    (root / "manifests" / "1s.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="malformed") as e:
        load_samples(root, "1s")
    assert e.value.sample == "b"


def test_iter_loaded_continues_past_bad_samples(root):
    samples = load_samples(root, "500ms") + load_samples(root, "1s")
    bad = dataclasses.replace(samples[1], sequence="no_such_sequence")
    rows = list(iter_loaded([samples[0], bad, samples[2]], load_event_images))
    assert [r[0].id for r in rows] == [samples[0].id, bad.id, samples[2].id]
    assert rows[0][1] is not None and rows[0][2] is None
    assert rows[1][1] is None and isinstance(rows[1][2], DataError) and rows[1][2].sample == bad.id
    assert len(rows[2][1]) == 5 and rows[2][2] is None


def test_iter_loaded_propagates_bugs(sample):
    def broken(_):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        list(iter_loaded([sample], broken))
