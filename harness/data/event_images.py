"""Event images, EventGPT-style: a window's events split into N chunks of equal event count, each
painted on a white canvas (polarity 0 blue, polarity 1 red). Where both polarities hit a pixel,
red wins: EventGPT paints the negative events first and the positive ones over them."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.data.dsec import SENSOR_HEIGHT, SENSOR_WIDTH, EventReader, Events
from harness.errors import EmptyWindowError

if TYPE_CHECKING:
    from harness.data.dataset import Sample

WHITE = (255, 255, 255)
NEG_COLOR = (0, 0, 255)  # polarity 0: blue
POS_COLOR = (255, 0, 0)  # polarity 1: red
DEFAULT_WINDOW_MS = 50
DEFAULT_N_CHUNKS = 5


def paint_events(x: np.ndarray, y: np.ndarray, p: np.ndarray, *, height: int = SENSOR_HEIGHT,
                 width: int = SENSOR_WIDTH) -> np.ndarray:
    """One (height, width, 3) uint8 RGB image of the given events."""
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    neg = p == 0
    img[y[neg], x[neg]] = NEG_COLOR
    img[y[~neg], x[~neg]] = POS_COLOR
    return img


def events_to_images(events: Events, n_chunks: int = DEFAULT_N_CHUNKS, *,
                     height: int = SENSOR_HEIGHT, width: int = SENSOR_WIDTH) -> list[np.ndarray]:
    """Split into n_chunks of (near-)equal event count, in time order, and paint each."""
    if len(events) == 0:
        raise EmptyWindowError("no events to paint")
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    # np.array_split: chunk sizes differ by at most one event.
    bounds = np.cumsum([0] + [len(c) for c in np.array_split(np.arange(len(events)), n_chunks)])
    return [paint_events(events.x[a:b], events.y[a:b], events.p[a:b], height=height, width=width)
            for a, b in zip(bounds[:-1], bounds[1:])]


def drafter_window(t0_us: int, t1_us: int, window_ms: int = DEFAULT_WINDOW_MS) -> tuple[int, int]:
    """The drafter looks at the last `window_ms` of the clip: [t1 - window, t1), kept inside the clip."""
    return max(t0_us, t1_us - window_ms * 1000), t1_us


def load_event_images(sample: "Sample", window_ms: int = DEFAULT_WINDOW_MS,
                      n_chunks: int = DEFAULT_N_CHUNKS) -> list[np.ndarray]:
    """Stage 1 for the drafter: n_chunks RGB uint8 images (480, 640, 3) of the sample's last
    `window_ms`. Times in the sample are relative to the recording's t_offset."""
    t_start, t_end = drafter_window(sample.t0_us, sample.t1_us, window_ms)
    with EventReader(sample.events_path, sample=sample.id) as reader:
        reader.check_window(sample.t0_us, sample.t1_us)  # the whole clip must be in the recording
        events = reader.slice(t_start, t_end, clock="relative")  # EmptyWindowError names file+sample
        return events_to_images(events, n_chunks, height=reader.height, width=reader.width)
