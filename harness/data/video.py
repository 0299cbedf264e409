"""Video frames, Video-LLaVA-style: n frames (default 8) sampled uniformly over the clip.

Time mapping: `timestamps.txt` holds one absolute µs timestamp per video frame (DSEC's image
timestamps, the clock of `t_offset`); frame i of the constant-rate video is the frame of
timestamps[i], whose time on the events' relative clock (that of the samples' t0_us/t1_us) is
timestamps[i] - t_offset.

Sampling: the frames whose timestamps fall in [t0, t1) are taken in order and
np.linspace(0, n_in_clip - 1, n_frames, dtype=int) picks from them (Video-LLaVA's uniform sampling
over the clip's frames, as the seed fork samples its clips). Frame i of the video is the frame of timestamps[i]; decode_frame_indices reads the
chosen frames in one of three ways (VIDEO_READERS), selected by `ppbench run --video-reader`.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from harness.data.dsec import read_t_offset
from harness.errors import DataError

if TYPE_CHECKING:
    from harness.data.dataset import Sample

DEFAULT_N_FRAMES = 8


def read_frame_timestamps(path: str | Path, *, sample: str | None = None) -> np.ndarray:
    """Absolute µs timestamps, one per frame, strictly increasing."""
    path = Path(path)
    if not path.is_file():
        raise DataError("frame timestamps file not found", path=path, sample=sample)
    try:
        ts = np.loadtxt(path, dtype=np.int64, ndmin=1, comments="#")
    except ValueError as e:
        raise DataError(f"frame timestamps unreadable: {e}", path=path, sample=sample) from e
    if ts.size == 0 or np.any(np.diff(ts) <= 0):
        raise DataError("frame timestamps empty or not strictly increasing", path=path, sample=sample)
    return ts


def sample_frame_indices(frame_times_us: np.ndarray, t0_us: int, t1_us: int,
                         n_frames: int = DEFAULT_N_FRAMES, *, path: object = None,
                         sample: str | None = None) -> np.ndarray:
    """Indices (into frame_times_us) of n_frames uniformly sampled frames of the clip [t0, t1)."""
    in_clip = np.flatnonzero((frame_times_us >= t0_us) & (frame_times_us < t1_us))
    if len(in_clip) < n_frames:
        raise DataError(f"clip [{t0_us}, {t1_us}) µs has {len(in_clip)} distinct frames, "
                        f"needs {n_frames}", path=path, sample=sample)
    return in_clip[np.linspace(0, len(in_clip) - 1, n_frames, dtype=int)]


def _frame_time_us(frame: av.VideoFrame, time_base: Fraction) -> int:
    return round(frame.pts * time_base * 1_000_000)


def decode_frames(path: str | Path, times_us: np.ndarray, *, tolerance_us: int,
                  sample: str | None = None) -> np.ndarray:
    """RGB uint8 (n, H, W, 3) frames shown at the given (increasing) video times, matched within
    tolerance_us."""
    path = Path(path)
    if not path.is_file():
        raise DataError("video file not found", path=path, sample=sample)
    times_us = np.asarray(times_us, dtype=np.int64)
    found: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError("no video stream", path=path, sample=sample)
            stream = container.streams.video[0]
            tb = stream.time_base
            container.seek(int(Fraction(int(times_us[0]), 1_000_000) / tb), stream=stream,
                           backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                ft = _frame_time_us(frame, tb)
                k = int(np.argmin(np.abs(times_us - ft)))
                if abs(int(times_us[k]) - ft) <= tolerance_us and k not in found:
                    found[k] = frame.to_ndarray(format="rgb24")
                if len(found) == len(times_us) or ft > times_us[-1] + tolerance_us:
                    break
    except DataError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot decode video: {e}", path=path, sample=sample) from e
    missing = [int(times_us[k]) for k in range(len(times_us)) if k not in found]
    if missing:
        raise DataError(f"video has no frames at {missing} µs (too short or corrupt)",
                        path=path, sample=sample)
    return np.stack([found[k] for k in range(len(times_us))])


VIDEO_READERS = ("seek", "decode-all", "threaded")
DEFAULT_VIDEO_READER = "seek"
KEYFRAME_INTERVAL = 5  # the keyframe spacing the seek reader assumes (import-dsec writes it; more keyframes only help)
# The seek reader's RGB conversions (swscale, which runs without the GIL) go to this many threads
# while the decoder goes on: at 1440x1080 a conversion costs about what a decode does.
CONVERT_THREADS = max(1, min(8, os.cpu_count() or 1))


def _frame_index(frame: av.VideoFrame, stream) -> int:
    rate = stream.average_rate or stream.guessed_rate
    start = stream.start_time or 0
    return round((frame.pts - start) * stream.time_base * rate)


def _seek(container, stream, index: int) -> None:
    rate = stream.average_rate or stream.guessed_rate
    container.seek(int(Fraction(index, 1) / rate / stream.time_base) + (stream.start_time or 0),
                   stream=stream, backward=True, any_frame=False)


def decode_frame_indices(path: str | Path, indices, *, reader: str = DEFAULT_VIDEO_READER,
                         sample: str | None = None) -> np.ndarray:
    """RGB uint8 (n, H, W, 3): the frames with these (increasing) indices of a constant-rate video.
    Three strategies for the same frames:
      seek        ppbench's: seek to the keyframe before a wanted frame whenever decoding from it is
                  shorter than decoding forward (_worth_seeking), convert only the wanted frames, on
                  CONVERT_THREADS threads while decoding goes on (same frames, off the decode path);
      decode-all  the seed's (Video-LLaVA's PyAV loop): decode and convert every frame from the
                  clip's first to its last wanted frame, keep the wanted ones;
      threaded    decode-all's frames, with ffmpeg's frame and slice threads (thread_type AUTO)."""
    if reader not in VIDEO_READERS:
        raise ValueError(f"video reader must be one of {VIDEO_READERS}, got {reader!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError("video file not found", path=path, sample=sample)
    wanted = [int(i) for i in indices]
    found: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError("no video stream", path=path, sample=sample)
            stream = container.streams.video[0]
            if reader == "threaded":
                stream.thread_type = "AUTO"
            if reader == "seek":
                _decode_seeking(container, stream, wanted, found)
            else:
                _decode_all(container, stream, wanted, found)
    except DataError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot decode video: {e}", path=path, sample=sample) from e
    missing = [i for i in wanted if i not in found]
    if missing:
        raise DataError(f"video has no frames at indices {missing} (too short or corrupt)", path=path, sample=sample)
    return np.stack([found[i] for i in wanted])


def _worth_seeking(pos: int | None, target: int) -> bool:
    """Seek when the keyframe before target (one every KEYFRAME_INTERVAL frames) lies past pos + 1:
    decoding target - key + 1 frames from it is then shorter than the target - pos frames forward."""
    return pos is None or target - target % KEYFRAME_INTERVAL > pos + 1


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _decode_seeking(container, stream, wanted: list[int], found: dict) -> None:
    pos, frames = None, None
    with ThreadPoolExecutor(CONVERT_THREADS) as pool:
        pending = {}
        for target in wanted:
            if _worth_seeking(pos, target):
                _seek(container, stream, target)
                frames = container.decode(stream)
            for frame in frames:
                if frame.pts is None:
                    continue
                pos = _frame_index(frame, stream)
                if pos == target:
                    pending[target] = pool.submit(_rgb, frame)
                if pos >= target:
                    break
        found.update({i: f.result() for i, f in pending.items()})


def _decode_all(container, stream, wanted: list[int], found: dict) -> None:
    _seek(container, stream, wanted[0])
    keep, decoded = set(wanted), {}
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        i = _frame_index(frame, stream)
        if i >= wanted[0]:
            decoded[i] = frame.to_ndarray(format="rgb24")
        if i >= wanted[-1]:
            break
    found.update({i: a for i, a in decoded.items() if i in keep})


def load_video_frames(sample: "Sample", n_frames: int = DEFAULT_N_FRAMES, *,
                      reader: str = DEFAULT_VIDEO_READER) -> np.ndarray:
    """Stage 1 for the target: (n_frames, H, W, 3) RGB uint8. Frame i of the video is the frame of
    timestamps[i] (constant rate, one video frame per timestamp, as import-dsec and the generator
    write them)."""
    ts = read_frame_timestamps(sample.timestamps_path, sample=sample.id)
    rel = ts - read_t_offset(sample.events_path, sample=sample.id)
    idx = sample_frame_indices(rel, sample.t0_us, sample.t1_us, n_frames,
                               path=sample.video_path, sample=sample.id)
    return decode_frame_indices(sample.video_path, idx, reader=reader, sample=sample.id)
