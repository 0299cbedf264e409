"""Samples and manifests.

Dataset root layout (DSEC-like):
    <root>/<sequence>/events/left/events.h5   DSEC events (see dsec.py)
    <root>/<sequence>/video.mp4               constant-rate video, frame i = timestamps[i]
    <root>/<sequence>/timestamps.txt          one frame timestamp per line, absolute µs
    <root>/manifests/<duration>.json          {"duration": "4s", "samples": [{id, sequence,
                                               t0_us, t1_us, question}, ...]}
Sample times t0_us/t1_us are µs *relative to t_offset* (the clock of events/t); the clip is [t0, t1).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from harness.errors import DataError

DURATIONS = ["500ms", "1s", "2s", "4s", "5s", "8s", "10s", "16s", "20s"]
DURATION_MS = {"500ms": 500, "1s": 1000, "2s": 2000, "4s": 4000, "5s": 5000, "8s": 8000,
               "10s": 10000, "16s": 16000, "20s": 20000}


@dataclass(frozen=True)
class Sample:
    id: str
    dataset: str  # duration label, e.g. "4s"
    sequence: str
    t0_us: int
    t1_us: int
    question: str
    root: Path

    @property
    def sequence_dir(self) -> Path:
        return Path(self.root) / self.sequence

    @property
    def events_path(self) -> Path:
        return self.sequence_dir / "events" / "left" / "events.h5"

    @property
    def video_path(self) -> Path:
        return self.sequence_dir / "video.mp4"

    @property
    def timestamps_path(self) -> Path:
        return self.sequence_dir / "timestamps.txt"

    @property
    def duration_us(self) -> int:
        return self.t1_us - self.t0_us


def manifest_path(root: str | Path, duration: str) -> Path:
    return Path(root) / "manifests" / f"{duration}.json"


def _parse_sample(entry: Any, duration: str, root: Path, path: Path, i: int) -> Sample:
    sid = entry.get("id") if isinstance(entry, dict) else None
    try:
        sample = Sample(id=str(entry["id"]), dataset=duration, sequence=str(entry["sequence"]),
                        t0_us=int(entry["t0_us"]), t1_us=int(entry["t1_us"]),
                        question=str(entry["question"]), root=root)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"manifest entry {i} malformed: {e!r}", path=path, sample=sid) from e
    if sample.t1_us <= sample.t0_us or sample.t0_us < 0:
        raise DataError(f"bad clip [{sample.t0_us}, {sample.t1_us}) µs", path=path, sample=sample.id)
    return sample


def load_samples(root: str | Path, duration: str, limit: int | None = None) -> list[Sample]:
    """Samples of one duration dataset, in manifest order (the first `limit` if given); the first
    malformed entry raises (read_manifest reports each one instead)."""
    samples, errors = read_manifest(root, duration, limit)
    if errors:
        raise errors[0]
    return samples


def read_manifest(root: str | Path, duration: str, limit: int | None = None
                  ) -> tuple[list[Sample], list[DataError]]:
    """(samples, one DataError per malformed entry) of one duration dataset, in manifest order,
    over its first `limit` entries. A missing or unreadable manifest raises DataError: that is a
    missing duration, not a failed sample."""
    root = Path(root)
    path = manifest_path(root, duration)
    if not path.is_file():
        raise DataError(f"manifest for duration {duration!r} not found", path=path)
    try:
        doc = json.loads(path.read_text())
        entries = doc["samples"]
        if not isinstance(entries, list):
            raise TypeError("'samples' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"manifest unreadable: {e!r}", path=path) from e
    if limit is not None:
        entries = entries[:limit]
    samples, errors = [], []
    for i, e in enumerate(entries):
        try:
            samples.append(_parse_sample(e, duration, root, path, i))
        except DataError as exc:
            exc.sample = exc.sample or f"entry-{i}"
            errors.append(exc)
    return samples, errors


def iter_loaded(samples: Iterable[Sample], loader: Callable[[Sample], Any]
                ) -> Iterator[tuple[Sample, Any, DataError | None]]:
    """Yield (sample, loader(sample), None), or (sample, None, error) when the sample's data is bad,
    so a long run records the error against that sample and carries on. Only DataError is caught:
    anything else is a bug and propagates."""
    for sample in samples:
        try:
            result = loader(sample)
        except DataError as e:
            yield sample, None, e
        else:
            yield sample, result, None
