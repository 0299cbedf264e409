"""Event images (EventGPT-style) and video frame sampling/decoding (Video-LLaVA-style)."""
from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.synthetic import build_dataset, write_events_h5
from harness.data import (Sample, events_to_images, load_event_images, load_samples,
                          load_video_frames, sample_frame_indices)
from harness.data.dsec import Events, read_events
from harness.data.event_images import drafter_window
from harness.data.video import read_frame_timestamps
from harness.errors import DataError, EmptyWindowError


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("ds") / "root", seed=3, samples_per_duration=3,
                         n_sequences=1, sequence_s=2.5, durations=["500ms", "1s", "2s"])


def _events(n, seed, unique_pixels=False):
    rng = np.random.default_rng(seed)
    if unique_pixels:
        flat = rng.choice(640 * 480, n, replace=False)
        y, x = np.divmod(flat, 640)
    else:  # few pixels: many pixels get both polarities
        x, y = rng.integers(0, 8, n), rng.integers(0, 8, n)
    return Events(x=x.astype(np.uint16), y=y.astype(np.uint16), t=np.arange(n, dtype=np.int64),
                  p=rng.integers(0, 2, n).astype(np.uint8))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(7, 300), n_chunks=st.integers(1, 7), seed=st.integers(0, 10**6))
def test_chunks_hold_len_div_n_events_and_the_last_the_rest(n, n_chunks, seed):
    """common/common.py get_event_images_list: len // N events per chunk, the remainder to the last."""
    ev = _events(n, seed, unique_pixels=True)
    imgs = events_to_images(ev, n_chunks)
    counts = [int((img != 255).any(axis=-1).sum()) for img in imgs]  # one pixel per event
    assert counts == [n // n_chunks] * (n_chunks - 1) + [n - (n_chunks - 1) * (n // n_chunks)]
    # chunks are consecutive in time: chunk 0 holds the first event
    assert (imgs[0][ev.y[0], ev.x[0]] != 255).any()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 200), seed=st.integers(0, 10**6))
def test_pixel_colours_follow_the_original_loop(n, seed):
    """common/common.py generate_event_image: canvas (y.max()+1, x.max()+1), events painted in
    time order (p == 0 blue, else red), so the last event at a pixel wins."""
    ev = _events(n, seed)
    (img,) = events_to_images(ev, 1)
    expected = np.full((int(ev.y.max()) + 1, int(ev.x.max()) + 1, 3), 255, np.uint8)
    for x, y, p in zip(ev.x, ev.y, ev.p):
        expected[y, x] = (0, 0, 255) if p == 0 else (255, 0, 0)
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img, expected)


def test_empty_events_raise():
    empty = Events(*(np.zeros(0, dt) for dt in (np.uint16, np.uint16, np.int64, np.uint8)))
    with pytest.raises(EmptyWindowError):
        events_to_images(empty)


def test_empty_window_raises_naming_file_and_sample(tmp_path):
    t = np.array([0, 1000, 500_000], dtype=np.int64)  # nothing in [400 ms, 450 ms)
    z = np.zeros(3, np.uint16)
    write_events_h5(tmp_path / "seq" / "events" / "left" / "events.h5", z, z, t, z.astype(np.uint8), 7)
    s = Sample("s1", "500ms", "seq", 0, 450_000, "q?", tmp_path)
    with pytest.raises(EmptyWindowError) as e:
        load_event_images(s)
    assert e.value.sample == "s1" and e.value.path.endswith("events.h5")


def test_load_event_images_uses_last_50ms(small_root):
    s = load_samples(small_root, "1s")[0]
    assert drafter_window(s.t0_us, s.t1_us) == (s.t1_us - 50_000, s.t1_us)
    imgs = load_event_images(s)
    ev = read_events(s.events_path, s.t1_us - 50_000, s.t1_us)
    expected = events_to_images(ev, 5)
    assert len(imgs) == 5
    for a, b in zip(imgs, expected):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(t0=st.integers(0, 3_000_000), dur=st.sampled_from([400_000, 500_000, 1_000_000, 2_000_000]),
       n=st.sampled_from([1, 4, 8]))
def test_frame_sampling_picks_uniform_timestamps(t0, dur, n):
    times = np.arange(100, dtype=np.int64) * 50_000  # 20 fps, 5 s
    t1 = t0 + dur
    in_clip = [i for i, v in enumerate(times) if t0 <= v < t1]
    if len(in_clip) < n:
        with pytest.raises(DataError, match="distinct frames"):
            sample_frame_indices(times, t0, t1, n)
        return
    idx = sample_frame_indices(times, t0, t1, n)
    expected = [in_clip[int(k)] for k in np.linspace(0, len(in_clip) - 1, n)]
    assert list(idx) == expected
    assert len(set(idx.tolist())) == n and idx[0] == in_clip[0]
    if n > 1:
        assert idx[-1] == in_clip[-1]


def test_frame_sampling_example():
    times = np.arange(20, dtype=np.int64) * 50_000
    # clip [0, 1 s) = frames 0..19; linspace(0, 19, 8) -> 0,2,5,8,10,13,16,19
    assert sample_frame_indices(times, 0, 1_000_000).tolist() == [0, 2, 5, 8, 10, 13, 16, 19]


def test_too_short_clip_names_file_and_sample():
    times = np.arange(20, dtype=np.int64) * 50_000
    with pytest.raises(DataError, match="7 distinct frames") as e:
        sample_frame_indices(times, 0, 350_000, 8, path="v.mp4", sample="s9")
    assert e.value.sample == "s9" and e.value.path == "v.mp4"


def _decode_all(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_video_frames_equal_full_decode(small_root):
    for duration in ("500ms", "1s", "2s"):
        for s in load_samples(small_root, duration):
            frames = load_video_frames(s)
            assert frames.shape == (8, 240, 320, 3) and frames.dtype == np.uint8
            ts = read_frame_timestamps(s.timestamps_path)
            rel = ts - ts[0]  # the generator's first frame sits at t_offset
            idx = sample_frame_indices(rel, s.t0_us, s.t1_us)
            all_frames = _decode_all(s.video_path)
            assert len(all_frames) == len(ts)
            for f, i in zip(frames, idx):
                np.testing.assert_array_equal(f, all_frames[i])
