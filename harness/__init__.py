"""ppbench: GPU performance regression suite for parallel-prefill speculative decoding
(EventGPT drafter on event-camera data, Video-LLaVA target on video frames)."""
__version__ = "0.1.0"
