"""The generator's DSEC bulk layout, `import-dsec` (clip rule, video, manifest, resume, bad input),
the three stage-1 video readers, and `import-seed`."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import av
import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

import harness.data.dsec_import as di
import harness.data.synthetic as sd
from harness.cli import main as cli_main
from harness.data import load_event_images, load_samples
from harness.data.dsec import EventReader
from harness.data.seed_import import import_seed
from harness.data.video import VIDEO_READERS, load_video_frames, sample_frame_indices
from harness.errors import DataError

SEQ = "synth_city_00_a"
DURS = ["500ms", "1s"]


@pytest.fixture(scope="module")
def bulk(tmp_path_factory):
    return sd.build_bulk(tmp_path_factory.mktemp("bulk") / "src", seed=3, scale="small", n_sequences=2,
                         sequence_s=1.6, event_rate=150_000)


@pytest.fixture(scope="module")
def imported(bulk, tmp_path_factory):
    out = tmp_path_factory.mktemp("imp") / "out"
    return out, di.import_dsec(bulk, out, durations=DURS)


@pytest.fixture
def src(bulk, tmp_path):
    """A private copy of the generated source, to damage."""
    return Path(shutil.copytree(bulk, tmp_path / "src"))


def _hashes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _tmp_leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if ".tmp-" in p.name]


# -- generator -------------------------------------------------------------------------------------
def test_generator_writes_dsec_bulk_layout(bulk):
    """The generated files are DSEC's bulk layout: 20 Hz PNGs, µs timestamps on the image clock,
    exposure timestamps with a header, Blosc/ZSTD events.h5 with uint32 t, ms_to_idx and t_offset,
    and a rectify_map."""
    ev = bulk / "train_events" / SEQ / "events" / "left"
    im = bulk / "train_images" / SEQ / "images"
    ts = np.loadtxt(im / "timestamps.txt", dtype=np.int64)
    assert np.all(np.diff(ts) == 50_000)
    pngs = sorted((im / "left" / "rectified").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(len(ts))]
    assert di.read_png(pngs[0]).shape == (240, 320, 3)
    lines = (im / "left" / "exposure_timestamps.txt").read_text().splitlines()
    assert lines[0].startswith("#") and len(lines) == len(ts) + 1
    start, end = (int(v) for v in lines[1].split(","))
    assert start < ts[0] < end
    with h5py.File(ev / "events.h5") as f:
        assert f["events/t"].dtype == np.uint32 and f["events/x"].dtype == np.uint16
        assert f["events/p"].dtype == np.uint8
        assert "32001" in str(f["events/t"]._filters)  # Blosc
        t = f["events/t"][:].astype(np.int64)
        ms_to_idx = f["ms_to_idx"][:]
        t_offset = int(f["t_offset"][()])
    assert np.array_equal(ms_to_idx, np.searchsorted(t, np.arange(len(ms_to_idx)) * 1000))
    assert ts[0] - t_offset == sd.FIRST_IMAGE_US
    with h5py.File(ev / "rectify_map.h5") as f:
        assert f["rectify_map"].shape == (480, 640, 2)


def test_generator_parallel_build_is_identical(bulk, tmp_path):
    """Images and events built in separate processes give the same bytes as one process."""
    again = sd.build_bulk(tmp_path / "p", seed=3, scale="small", n_sequences=2, sequence_s=1.6,
                          event_rate=150_000, workers=2)
    assert _hashes(again) == _hashes(bulk)


def test_generator_event_rate_and_dsec_scale(tmp_path):
    """The event rate is what was asked for (scene events plus filler); the dsec scale writes
    1440x1080 frames."""
    root = sd.build_bulk(tmp_path / "d", scale="dsec", n_sequences=1, sequence_s=0.3, event_rate=400_000)
    info = json.loads((root / sd.MARKER).read_text())["sequences"][SEQ]
    assert info["n_events"] >= 400_000 * 0.3 * 0.99
    assert info["n_filler_events"] + info["n_scene_events"] == info["n_events"]
    png = root / "train_images" / SEQ / "images" / "left" / "rectified" / "000000.png"
    assert di.read_png(png).shape == (1080, 1440, 3)


def test_ground_truth_matches_scene(bulk):
    """ground_truth/<seq>.json holds the scene the sequence was rendered from."""
    truth = json.loads((bulk / "ground_truth" / f"{SEQ}.json").read_text())
    scene = sd.make_scene(np.random.default_rng([3, 0]))
    assert [s["kind"] for s in truth["shapes"]] == [s.kind for s in scene.shapes]
    assert [tuple(s["velocity_px_s"]) for s in truth["shapes"]] == [s.vel for s in scene.shapes]
    assert [s["color"] for s in truth["shapes"]] == [sd.color_name(s.color) for s in scene.shapes]
    assert {s["color"] for s in truth["shapes"]} <= set(sd._COLOR_NAMES.values())


# -- clip rule and import --------------------------------------------------------------------------
def test_seed_clip_rule():
    """Starts at the first image, steps d/2, and keeps start + d <= last image."""
    assert di.seed_clip_starts(100, 2100, 1000) == [100, 600, 1100]
    assert di.seed_clip_starts(100, 1099, 1000) == []


def test_import_follows_rule_and_reads_events_in_place(bulk, imported):
    """Manifests list exactly the rule's clips; events are a link to the untouched source; the
    mp4 has one frame per timestamp and a keyframe every KEYFRAME_INTERVAL frames."""
    out, summary = imported
    before = _hashes(bulk)
    ts = np.loadtxt(bulk / "train_images" / SEQ / "images" / "timestamps.txt", dtype=np.int64)
    with EventReader(bulk / "train_events" / SEQ / "events" / "left" / "events.h5") as r:
        t_offset = r.t_offset
    for d in DURS:
        got = [s for s in load_samples(out, d) if s.sequence == SEQ]
        want = [s - t_offset for s in di.seed_clip_starts(ts[0], ts[-1], di.DURATION_MS[d] * 1000)]
        assert [s.t0_us for s in got] == want and want
        assert all(s.t1_us - s.t0_us == di.DURATION_MS[d] * 1000 for s in got)
    link = out / SEQ / "events" / "left" / "events.h5"
    assert link.is_symlink() and link.resolve() == (bulk / "train_events" / SEQ / "events" / "left" / "events.h5").resolve()
    with av.open(str(out / SEQ / "video.mp4")) as c:
        keys = [f.key_frame for f in c.decode(video=0)]
    assert len(keys) == len(ts)
    assert [i for i, k in enumerate(keys) if k][:3] == [0, di.KEYFRAME_INTERVAL, 2 * di.KEYFRAME_INTERVAL]
    # every clip starts on a keyframe (decode-all then does the seed's per-clip work, no more)
    for d in DURS:
        firsts = [int(np.searchsorted(ts - t_offset, s.t0_us)) for s in load_samples(out, d) if s.sequence == SEQ]
        assert firsts and all(keys[i] for i in firsts), (d, firsts)
    assert summary["skipped"] == [] and summary["rule"]["durations_us"] == {"500ms": 500_000, "1s": 1_000_000}
    assert (out / SEQ / "ground_truth.json").is_file()
    assert _hashes(bulk) == before


def test_readers_return_identical_frames_on_every_duration(imported):
    """seek (threaded RGB conversion), decode-all and threaded return the same frames on clips that
    start on a keyframe and on later ones; the seek reader assumes import-dsec's keyframe interval."""
    from harness.data.video import KEYFRAME_INTERVAL

    assert KEYFRAME_INTERVAL == di.KEYFRAME_INTERVAL
    out, _ = imported
    for d in DURS:
        for s in load_samples(out, d)[:3]:
            frames = {r: load_video_frames(s, 8, reader=r) for r in VIDEO_READERS}
            assert all(np.array_equal(frames["seek"], f) for f in frames.values()), (d, s.id)


def test_imported_samples_load_for_both_models(imported, bulk):
    """Every stage-1 reader returns the same 8 frames, and they are the clip's PNGs (lossy codec:
    closer to the chosen PNGs than to their neighbours)."""
    out, _ = imported
    s = load_samples(out, "1s")[0]
    frames = {r: load_video_frames(s, 8, reader=r) for r in VIDEO_READERS}
    assert all(np.array_equal(frames["seek"], f) for f in frames.values())
    ts = np.loadtxt(s.timestamps_path, dtype=np.int64)
    with EventReader(s.events_path) as r:
        idx = sample_frame_indices(ts - r.t_offset, s.t0_us, s.t1_us, 8)
    folder = bulk / "train_images" / s.sequence / "images" / "left" / "rectified"
    err = lambda shift: np.mean([np.abs(di.read_png(folder / f"{i + shift:06d}.png").astype(int) - f).mean()
                                 for i, f in zip(idx, frames["seek"])])
    assert err(0) < err(1)
    assert len(load_event_images(s)) > 0


def test_merged_layout_imports_the_same(bulk, tmp_path):
    """A merged per-sequence folder gives the same samples as the bulk layout."""
    merged = tmp_path / "merged"
    for name in (SEQ, "synth_city_01_a"):
        shutil.copytree(bulk / "train_events" / name / "events", merged / name / "events")
        shutil.copytree(bulk / "train_images" / name / "images", merged / name / "images")
    a = di.import_dsec(bulk, tmp_path / "a", durations=DURS)
    b = di.import_dsec(merged, tmp_path / "b", durations=DURS)
    assert a["counts"] == b["counts"]
    assert {k: v["layout"] for k, v in b["source_sequences"].items()} == {SEQ: "merged", "synth_city_01_a": "merged"}
    for d in DURS:
        assert json.loads((tmp_path / "a/manifests" / f"{d}.json").read_text())["samples"] == \
               json.loads((tmp_path / "b/manifests" / f"{d}.json").read_text())["samples"]


def test_cap_questions_and_sequence_filter(bulk, tmp_path):
    """The cap keeps evenly spaced clips, questions cycle through the given list, and the
    sequence filter imports only the named sequences."""
    assert di.select_evenly(list(range(10)), 3) == [0, 4, 9]
    qs = ["Q one?", "Q two?"]
    summary = di.import_dsec(bulk, tmp_path / "o", durations=["500ms"], sequences=[SEQ], questions=qs,
                             samples_per_duration=3)
    samples = load_samples(tmp_path / "o", "500ms")
    assert len(samples) == 3 and {s.sequence for s in samples} == {SEQ}
    assert [s.question for s in samples] == ["Q one?", "Q two?", "Q one?"]
    assert summary["counts"]["500ms"]["clips"] > 3
    with pytest.raises(DataError, match="nope"):
        di.import_dsec(bulk, tmp_path / "p", sequences=["nope"])


# -- bad input -------------------------------------------------------------------------------------
def _skips(summary):
    return {(s["clip"], s["reason"].split(":")[0]): s for s in summary["skipped"]}


def test_truncated_and_missing_pngs_skip_their_clips(src, tmp_path):
    """A truncated PNG and a missing PNG skip exactly the clips that use them, naming the file."""
    rect = src / "train_images" / SEQ / "images" / "left" / "rectified"
    data = (rect / "000005.png").read_bytes()
    (rect / "000005.png").write_bytes(data[: len(data) // 2])
    (rect / "000025.png").unlink()
    summary = di.import_dsec(src, tmp_path / "o", durations=["500ms"])
    bad = [s for s in summary["skipped"] if s["clip"] and s["clip"].startswith(SEQ)]
    assert bad and all(s["reason"].startswith(("unreadable PNGs", "missing PNGs")) for s in bad)
    assert any(s["file"].endswith("000005.png") for s in bad) and any("000025.png" in s["reason"] for s in bad)
    kept = load_samples(tmp_path / "o", "500ms")
    ts = np.loadtxt(src / "train_images" / SEQ / "images" / "timestamps.txt", dtype=np.int64)
    t_off = ts[0] - sd.FIRST_IMAGE_US
    for s in kept:
        if s.sequence == SEQ:
            used = np.flatnonzero((ts - t_off >= s.t0_us) & (ts - t_off < s.t1_us))
            assert 5 not in used and 25 not in used
    assert kept, "the other clips are still imported"


def test_sequence_missing_images_or_events_and_unreadable_h5(src, tmp_path):
    """A sequence without events, one without images, and an unreadable h5 are each reported with
    the file, and the import goes on with the rest."""
    shutil.rmtree(src / "train_images" / "synth_city_01_a")
    summary = di.import_dsec(src, tmp_path / "a", durations=["500ms"])
    s = _skips(summary)[(None, "sequence has no images folder")]
    assert "synth_city_01_a" in s["file"]
    assert summary["counts"]["500ms"]["samples"] > 0

    (src / "train_events" / SEQ / "events" / "left" / "events.h5").write_bytes(b"not hdf5 at all")
    summary = di.import_dsec(src, tmp_path / "b", durations=["500ms"])
    s = _skips(summary)[(None, "unreadable h5")]
    assert s["file"].endswith("events.h5") and "cannot open events file" in s["reason"]

    shutil.rmtree(src / "train_events" / SEQ)
    summary = di.import_dsec(src, tmp_path / "c", durations=["500ms"])
    assert _skips(summary)[(None, "sequence has no events.h5")]


def test_extra_pngs_and_edge_clips(src, tmp_path):
    """More PNGs than timestamps skips the sequence; a clip beyond the end of the events (the
    recording's edge) is skipped with its window."""
    rect = src / "train_images" / "synth_city_01_a" / "images" / "left" / "rectified"
    shutil.copy(rect / "000000.png", rect / "000999.png")
    ev_path = src / "train_events" / SEQ / "events" / "left" / "events.h5"
    with h5py.File(ev_path) as f:
        x, y, t, p = (f[f"events/{k}"][:] for k in "xytp")
        t_offset = int(f["t_offset"][()])
    keep = t < 1_000_000
    ev_path.unlink()
    sd.write_events_h5(ev_path, x[keep], y[keep], t[keep], p[keep], t_offset)
    summary = di.import_dsec(src, tmp_path / "o", durations=["500ms", "1s"])
    skips = _skips(summary)
    assert "timestamp count" in skips[(None, "timestamp count 32 != PNG count 33 (PNGs 000999.png... have no timestamp)")]["reason"]
    edge = [s for s in summary["skipped"] if s["reason"].startswith("at the recording's edge")]
    assert edge and all(s["clip"].startswith(SEQ) and s["file"].endswith("events.h5") for s in edge)
    assert load_samples(tmp_path / "o", "500ms")


def test_interrupted_import_leaves_nothing_half_written_and_resumes(src, tmp_path, monkeypatch):
    """An import interrupted while encoding leaves no temporary file, no video and no .complete;
    the rerun re-encodes only the unfinished sequences and gives the same result."""
    out = tmp_path / "o"
    real_read, calls = di.read_png, {"n": 0}

    def flaky(path):
        calls["n"] += 1
        if "synth_city_01_a" in str(path) and calls["n"] > 40:
            raise KeyboardInterrupt
        return real_read(path)
    monkeypatch.setattr(di, "read_png", flaky)
    with pytest.raises(KeyboardInterrupt):
        di.import_dsec(src, out, durations=DURS)
    assert not (out / di.MARKER).exists() and _tmp_leftovers(out) == []
    assert (out / SEQ / di.SEQ_DONE).is_file() and not (out / "synth_city_01_a" / "video.mp4").exists()
    monkeypatch.setattr(di, "read_png", real_read)
    encoded = []
    real_encode = di.encode_video
    monkeypatch.setattr(di, "encode_video", lambda f, n, o, d: encoded.append(o.parent.name) or real_encode(f, n, o, d))
    summary = di.import_dsec(src, out, durations=DURS)
    assert encoded == ["synth_city_01_a"] and (out / di.MARKER).is_file()
    fresh = di.import_dsec(src, tmp_path / "fresh", durations=DURS)
    assert summary["counts"] == fresh["counts"]


def test_cli_reports_bad_source_in_one_line(tmp_path, capsys):
    """A missing source is one line naming it, not a traceback."""
    with pytest.raises(SystemExit) as e:
        cli_main(["dataset", "import-dsec", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert "nope" in str(e.value) and "\n" not in str(e.value)


# -- import-seed -----------------------------------------------------------------------------------
def _seed_dataset(root: Path, n_frames: int = 20) -> Path:
    ds = root / "my_egpt_dsec_seq_1s"
    (ds / "event_npy" / "thun_00_a").mkdir(parents=True)
    (ds / "mp4" / "thun_00_a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    start = 52_000_000_000
    t = np.sort(start + rng.integers(0, 990_000, 5000))
    np.save(ds / "event_npy" / "thun_00_a" / "000000.npy",
            {"x": rng.integers(0, 640, 5000), "y": rng.integers(0, 480, 5000), "t": t,
             "p": rng.integers(0, 2, 5000), "time_start": start, "time_end": start + 1_000_000})
    w = sd.VideoWriter(ds / "mp4" / "thun_00_a" / "000000.mp4", 20, 64, 48)
    for i in range(n_frames):
        w.write(np.full((48, 64, 3), i * 10, np.uint8))
    w.close()
    (ds / "EventGPT_Instruction_Subset.json").write_text(json.dumps([
        {"id": "abc", "split": ds.name, "event_data": "thun_00_a/000000.npy", "video_data": "thun_00_a/000000",
         "mp4_data": "thun_00_a/000000.mp4", "event_image": [],
         "conversations": [{"from": "human", "value": "<event>\nWhat is here?"}, {"from": "gpt", "value": ""}]},
        {"id": "missing", "split": ds.name, "event_data": "thun_00_a/000001.npy", "mp4_data": "thun_00_a/000001.mp4",
         "conversations": []}]))
    return ds


def test_import_seed_runs_seed_clips_as_they_are(tmp_path):
    """The seed's clip loads with its own mp4 and the seed's frame choice (linspace over all the
    mp4's frames); a pickled npy needs --allow-pickle; a missing clip is skipped with its file."""
    ds = _seed_dataset(tmp_path)
    with pytest.raises(DataError, match="--allow-pickle"):
        import_seed(ds, tmp_path / "o")
    summary = import_seed(tmp_path, tmp_path / "o", allow_pickle=True)
    assert summary["counts"] == {"1s": 1}
    assert summary["skipped"][0]["clip"] == "missing" and summary["skipped"][0]["file"].endswith("000001.npy")
    s = load_samples(tmp_path / "o", "1s")[0]
    assert s.question == "What is here?" and s.video_path.resolve() == (ds / "mp4/thun_00_a/000000.mp4").resolve()
    frames = load_video_frames(s, 8)
    want = np.linspace(0, 19, 8).astype(int) * 10
    assert np.allclose(frames[:, 0, 0, 0].astype(int), want, atol=3)
    assert len(load_event_images(s)) > 0


def test_event_count_matches_slice(bulk):
    """EventReader.count (two boundary reads) equals the length of the full slice."""
    rng = np.random.default_rng(0)
    with EventReader(bulk / "train_events" / SEQ / "events" / "left" / "events.h5") as r:
        for _ in range(20):
            a = int(rng.integers(0, r.t_last))
            b = int(rng.integers(a + 1, r.t_last + 2))
            assert r.count(a, b) == len(r.slice(a, b, allow_empty=True))


def test_video_reader_option_reaches_the_run():
    """--video-reader is validated by the option table and recorded in the run's metadata."""
    from harness.options import defaults
    from harness.pipeline import config_meta
    from harness.runconfig import resolve

    cfg = resolve(defaults(video_reader="threaded", device="cpu"))
    assert cfg.video_reader == "threaded" and config_meta(cfg)["video_reader"] == "threaded"
    assert config_meta(cfg)["data_scale"] == "small"
