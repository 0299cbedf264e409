"""Typed errors. Every error that comes from bad input names the file and, when known, the sample,
so a long run can record it against the sample and carry on."""
from __future__ import annotations


class PpbenchError(Exception):
    """Base class for every error this project raises on purpose."""


class DataError(PpbenchError):
    """Bad or missing input data (events.h5, video.mp4, manifest)."""

    def __init__(self, message: str, *, path: object = None, sample: str | None = None):
        self.path = None if path is None else str(path)
        self.sample = sample
        where = []
        if sample is not None:
            where.append(f"sample {sample}")
        if self.path is not None:
            where.append(f"file {self.path}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class EmptyWindowError(DataError):
    """The requested time window holds no events."""


class ModelLoadError(PpbenchError):
    """A checkpoint is missing, has the wrong layout or keys, or would need unsafe loading."""

    def __init__(self, message: str, *, path: object = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{message} (checkpoint {self.path})" if self.path else message)


class UsageError(PpbenchError):
    """A wrong option or a combination that cannot run: one line for the user, no traceback (exit 2)."""
