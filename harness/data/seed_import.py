"""`ppbench dataset import-seed JSON_DIR`: the seed fork's own datasets, clip for clip.

The seed (xifan-zhang/EventGPT, feasible/my_egpt_dsec_dataset/) writes one folder per duration,
e.g. `my_egpt_dsec_seq_5s/`:
  EventGPT_Instruction_Subset.json   [{id, split, event_data: "seq/000000.npy", video_data,
                                       mp4_data: "seq/000000.mp4", event_image, conversations}]
  event_npy/<seq>/<clip>.npy         np.save of a dict {x, y, t (absolute µs), p, time_start,
                                     time_end, ...}: a pickle, so reading it needs --allow-pickle
  mp4/<seq>/<clip>.mp4               the clip's PNGs at 20 fps (libx264, crf 28)
JSON_DIR is one such folder or a folder holding several. Output, per clip:
  <out>/<split>/<seq>/<clip>/video.mp4            a symlink to the seed's mp4 (read as it is)
  <out>/<split>/<seq>/<clip>/events/left/events.h5 the clip's events in DSEC layout, t relative to
                                                   t_offset = the clip's time_start
  <out>/<split>/<seq>/<clip>/timestamps.txt        one timestamp per mp4 frame, spread evenly over
                                                   the clip, so the 8 frames ppbench samples are the
                                                   seed's np.linspace(0, n - 1, 8) over all n frames
and <out>/manifests/<duration>.json with the seed's question of each sample (its first human turn,
the <event>/<video> placeholder removed) or, where that is empty, the seed's benchmark question.
The event window is [0, min(d, last event + 1)): the clip's events are all inside it.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import av
import numpy as np

from harness.data.dsec_import import SEED_QUESTIONS, _tmp, _write_json, parse_duration
from harness.data.synthetic import write_events_h5
from harness.errors import DataError

SEED_JSON = "EventGPT_Instruction_Subset.json"
_SPLIT_DURATION = re.compile(r"(\d+(?:\.\d+)?(?:ms|s))$")


def find_seed_datasets(json_dir: str | Path) -> list[Path]:
    root = Path(json_dir)
    if (root / SEED_JSON).is_file():
        return [root]
    found = sorted(p.parent for p in root.glob(f"*/{SEED_JSON}"))
    if not found:
        raise DataError(f"no {SEED_JSON} in the folder or its subfolders", path=root)
    return found


def load_seed_events(path: Path, *, allow_pickle: bool, sample: str) -> dict:
    if not path.is_file():
        raise DataError("event npy not found", path=path, sample=sample)
    try:
        obj = np.load(path, allow_pickle=allow_pickle)
    except ValueError as e:
        if not allow_pickle and "pickle" in str(e).lower():
            raise DataError("the seed's event npy is a pickled dict; pass --allow-pickle to read it "
                            "(only for files you trust)", path=path, sample=sample) from None
        raise DataError(f"event npy unreadable: {e}", path=path, sample=sample) from e
    except (OSError, EOFError) as e:
        raise DataError(f"event npy unreadable: {e}", path=path, sample=sample) from e
    doc = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0 else obj
    if isinstance(doc, np.ndarray) and doc.dtype.names:
        doc = {k: doc[k] for k in doc.dtype.names}
    if not isinstance(doc, dict) or not {"x", "y", "t", "p"} <= set(doc):
        raise DataError("event npy is not the seed's {x, y, t, p, ...} dict", path=path, sample=sample)
    return doc


def count_frames(path: Path, *, sample: str) -> int:
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            return int(stream.frames) or sum(1 for _ in c.decode(stream))
    except (av.error.FFmpegError, OSError, IndexError) as e:
        raise DataError(f"cannot read video: {e}", path=path, sample=sample) from e


def _question(entry: dict) -> str:
    for turn in entry.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") == "human":
            q = re.sub(r"<(event|video|image)>\s*", "", str(turn.get("value") or "")).strip()
            return q or SEED_QUESTIONS[0]
    return SEED_QUESTIONS[0]


def import_clip(ds: Path, entry: dict, out: Path, split: str, d_us: int, *, allow_pickle: bool) -> dict:
    sid = str(entry.get("id"))
    event_rel, mp4_rel = entry.get("event_data"), entry.get("mp4_data")
    if not event_rel or not mp4_rel:
        raise DataError("sample has no event_data or mp4_data", path=ds / SEED_JSON, sample=sid)
    ev = load_seed_events(ds / "event_npy" / event_rel, allow_pickle=allow_pickle, sample=sid)
    mp4 = (ds / "mp4" / mp4_rel).resolve()
    if not mp4.is_file():
        raise DataError("mp4 not found", path=mp4, sample=sid)
    t = np.asarray(ev["t"], dtype=np.int64)
    if t.size == 0:
        raise DataError("no events in the clip", path=ds / "event_npy" / event_rel, sample=sid)
    start = int(ev.get("time_start", t[0]))
    rel = t - start
    if rel[0] < 0 or np.any(np.diff(rel) < 0):
        raise DataError("event times before time_start or not sorted", path=ds / "event_npy" / event_rel, sample=sid)
    n = count_frames(mp4, sample=sid)
    end = min(d_us, int(rel[-1]) + 1)
    if n < 8 or end < n:
        raise DataError(f"mp4 has {n} frames (needs 8) or the events span {end} µs", path=mp4, sample=sid)
    clip = Path(split) / Path(str(event_rel)).with_suffix("")
    clip_dir = out / clip
    (clip_dir / "events" / "left").mkdir(parents=True, exist_ok=True)
    h5 = clip_dir / "events" / "left" / "events.h5"
    write_events_h5(_tmp(h5), np.asarray(ev["x"], np.uint16), np.asarray(ev["y"], np.uint16),
                    rel.astype(np.uint32), np.asarray(ev["p"], np.uint8), start)
    os.replace(_tmp(h5), h5)
    step = end // n
    (_tmp(clip_dir / "timestamps.txt")).write_text("".join(f"{start + k * step}\n" for k in range(n)))
    os.replace(_tmp(clip_dir / "timestamps.txt"), clip_dir / "timestamps.txt")
    link = clip_dir / "video.mp4"
    _tmp(link).unlink(missing_ok=True)
    _tmp(link).symlink_to(mp4)
    os.replace(_tmp(link), link)
    return {"id": sid, "sequence": clip.as_posix(), "t0_us": 0, "t1_us": end, "question": _question(entry)}


def import_seed(json_dir: str | Path, out: str | Path, *, allow_pickle: bool = False,
                samples_per_duration: int | None = None, progress=None) -> dict:
    """Import every seed dataset under json_dir into out; returns the summary (also import.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifests, skipped, counts = {}, [], {}
    datasets = find_seed_datasets(json_dir)
    for ds in datasets:
        try:
            entries = json.loads((ds / SEED_JSON).read_text())
            if not isinstance(entries, list):
                raise TypeError("not a list of samples")
        except (OSError, ValueError, TypeError) as e:
            raise DataError(f"seed sample JSON unreadable: {e}", path=ds / SEED_JSON) from e
        m = _SPLIT_DURATION.search(ds.name)
        if not m:
            raise DataError("cannot tell the duration from the folder name (expected ..._<N>s or ..._<N>ms)", path=ds)
        label, d_us = m.group(1), parse_duration(m.group(1))
        samples = manifests.setdefault(label, [])
        for i, entry in enumerate(entries[:samples_per_duration] if samples_per_duration else entries):
            try:
                samples.append(import_clip(ds, entry, out, ds.name, d_us, allow_pickle=allow_pickle))
            except DataError as e:
                if "--allow-pickle" in str(e):
                    raise
                skipped.append({"clip": e.sample, "reason": str(e), "file": e.path})
            if progress:
                progress(i + 1, len(entries), ds.name)
        counts[label] = len(samples)
    (out / "manifests").mkdir(exist_ok=True)
    for label, samples in manifests.items():
        _write_json(out / "manifests" / f"{label}.json",
                    {"duration": label, "time_reference": "microseconds relative to t_offset (the clip's time_start)",
                     "source": "ppbench dataset import-seed", "samples": samples})
    summary = {"source": [str(d.resolve()) for d in datasets], "counts": counts, "skipped": skipped,
               "events": "converted from the seed's npy into DSEC-layout events.h5 (t relative to time_start)",
               "video": "the seed's per-clip mp4, linked"}
    _write_json(out / "import.json", summary)
    return summary
