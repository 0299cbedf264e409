"""Event images exactly as the original EventGPT computes them (XduSyL/EventGPT, common/common.py:
`get_event_images_list` and `generate_event_image`):

- Chunking: N chunks in time order; each of the first N - 1 gets `len // N` events, the last one
  gets the rest (`len // N + len % N`).
- Canvas: each chunk is painted on its own white canvas of (y.max() + 1, x.max() + 1) of that
  chunk's events, so canvases of one window can differ in size.
- Paint: events in time order, polarity 0 blue (0, 0, 255), any other polarity red (255, 0, 0);
  where several events hit one pixel, the last one wins.

The original loops over events in Python; here the last event per pixel is found with numpy, which
gives the same image.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.data.dsec import EventReader, Events
from harness.errors import EmptyWindowError

if TYPE_CHECKING:
    from harness.data.dataset import Sample

WHITE = (255, 255, 255)
NEG_COLOR = (0, 0, 255)  # polarity 0: blue
POS_COLOR = (255, 0, 0)  # any other polarity: red
DEFAULT_WINDOW_MS = 50
DEFAULT_N_CHUNKS = 5
EVENT_IMAGE_CHOICES = (1, 5)  # the original's 5; the seed fork's 1-image variant


def paint_events(x: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """One (y.max() + 1, x.max() + 1, 3) uint8 RGB image; the last event at a pixel wins."""
    if len(x) == 0:
        raise EmptyWindowError("no events to paint")
    x = np.asarray(x).astype(np.int64)
    y = np.asarray(y).astype(np.int64)
    height, width = int(y.max()) + 1, int(x.max()) + 1
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    flat = y * width + x
    # Index of the last event at each hit pixel: first occurrence in the reversed order.
    _, first_rev = np.unique(flat[::-1], return_index=True)
    last = len(flat) - 1 - first_rev
    neg = np.asarray(p)[last] == 0
    img[y[last[neg]], x[last[neg]]] = NEG_COLOR
    img[y[last[~neg]], x[last[~neg]]] = POS_COLOR
    return img


def chunk_bounds(n_events: int, n_chunks: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk: `n // N` events each, the remainder to the last chunk."""
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    per = n_events // n_chunks
    return [(i * per, (i + 1) * per if i < n_chunks - 1 else n_events) for i in range(n_chunks)]


def events_to_images(events: Events, n_chunks: int = DEFAULT_N_CHUNKS) -> list[np.ndarray]:
    """N event images of the events, in time order (see the module docstring for the rules)."""
    if len(events) == 0:
        raise EmptyWindowError("no events to paint")
    if len(events) < n_chunks:
        # The original would paint an empty chunk (and fail on y.max() of nothing).
        raise EmptyWindowError(f"{len(events)} events cannot fill {n_chunks} event images")
    return [paint_events(events.x[a:b], events.y[a:b], events.p[a:b]) for a, b in chunk_bounds(len(events), n_chunks)]


def drafter_window(t0_us: int, t1_us: int, window_ms: int = DEFAULT_WINDOW_MS) -> tuple[int, int]:
    """The drafter looks at the last `window_ms` of the clip: [t1 - window, t1), kept inside the clip."""
    return max(t0_us, t1_us - window_ms * 1000), t1_us


def load_event_images(sample: "Sample", window_ms: int = DEFAULT_WINDOW_MS,
                      n_chunks: int = DEFAULT_N_CHUNKS) -> list[np.ndarray]:
    """Stage 1 for the drafter: n_chunks RGB uint8 event images of the sample's last `window_ms`
    (each sized by its own events). Times in the sample are relative to the recording's t_offset."""
    t_start, t_end = drafter_window(sample.t0_us, sample.t1_us, window_ms)
    with EventReader(sample.events_path, sample=sample.id) as reader:
        reader.check_window(sample.t0_us, sample.t1_us)  # the whole clip must be in the recording
        events = reader.slice(t_start, t_end, clock="relative")  # EmptyWindowError names file+sample
    try:
        return events_to_images(events, n_chunks)
    except EmptyWindowError as e:
        raise EmptyWindowError(str(e), path=sample.events_path, sample=sample.id) from None
