"""Stage-1 inputs: DSEC events -> event images (drafter), mp4 -> video frames (target), manifests.
Contract: docs/DESIGN.md "Data layer"."""
from harness.data.dataset import (DURATION_MS, DURATIONS, Sample, iter_loaded, load_samples,
                                  manifest_path, read_manifest)
from harness.data.dsec import SENSOR_HEIGHT, SENSOR_WIDTH, EventReader, Events, read_events
from harness.data.event_images import events_to_images, load_event_images
from harness.data.video import load_video_frames, sample_frame_indices

__all__ = ["DURATIONS", "DURATION_MS", "Sample", "load_samples", "manifest_path", "iter_loaded",
           "Events", "EventReader", "read_events", "SENSOR_WIDTH", "SENSOR_HEIGHT",
           "events_to_images", "load_event_images", "load_video_frames", "sample_frame_indices"]
