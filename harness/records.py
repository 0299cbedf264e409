"""Append-only JSONL records: every finished sample is on disk before the next starts, so a crash
or Ctrl-C loses nothing, and `--resume` skips what is already there."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from .console import raise_if_interrupted


class RecordWriter:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Appends the record; once it is on disk, a Ctrl-C that Python swallowed on its way up
        stops the run here (console.interrupts_kept)."""
        self.append(record)
        raise_if_interrupted()

    def append(self, record: dict) -> None:
        """The record as one JSON line, synced to disk."""
        self._fh.write(json.dumps(record, allow_nan=False, default=_jsonable) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _jsonable(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def iter_records(path: str | os.PathLike) -> Iterator[dict]:
    """Reads records; a torn last line (the process died mid-write) is skipped, not fatal."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise ValueError(f"corrupt record at line {i + 1} of {path}") from None


def load_records(path: str | os.PathLike) -> list[dict]:
    return list(iter_records(path))


def record_key(record: dict) -> tuple:
    """Identity of a measurement: what --resume skips, and what must never be duplicated."""
    if record.get("kind") == "engine":
        return ("engine", record["dataset"], record["sample_id"], record["mode"],
                str(record.get("gamma")), record.get("alpha_simulated"))
    return (record.get("kind", "stages"), record["dataset"], record["sample_id"], record["model"])


def done_keys(records: Iterable[dict]) -> set[tuple]:
    """What --resume skips: successful records, and baselines that cannot run with this pair.
    A failed record is retried; its retry is appended and replaces it (metrics.dedupe)."""
    return {record_key(r) for r in records
            if not r.get("error") or r["error"].get("type") == "Unsupported"}


def repair_torn_tail(path: str | os.PathLike) -> None:
    """Truncates a torn last line so appending after a crash keeps the file valid JSONL."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)


def shard_files(out: str | os.PathLike) -> list[Path]:
    """The per-rank record files of a sharded run in `out` (harness/shard.py writes them)."""
    return sorted((Path(out) / "shards").glob("*/rank-*.jsonl"))


def has_shards(out: str | os.PathLike) -> bool:
    return any(p.stat().st_size > 0 for p in shard_files(out))
