"""Where in a video to sample: times within a window, and windows along a video."""

from __future__ import annotations

import math

import torch

SAMPLING_MODES = ("uniform", "random")


def sample_times(
    start: float,
    end: float,
    num_frames: int,
    mode: str = "uniform",
    generator: torch.Generator | None = None,
) -> list[float]:
    """Times to sample in `[start, end)`: segment centres, or a random point per segment.

    The random mode is TSN-style: one frame from each of `num_frames` equal segments, so a
    training clip still covers the whole window.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; valid: {', '.join(SAMPLING_MODES)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    segment = (end - start) / num_frames
    if mode == "uniform":
        offsets = [0.5] * num_frames
    else:
        offsets = torch.rand(num_frames, generator=generator, dtype=torch.float64).tolist()
    return [start + (i + u) * segment for i, u in enumerate(offsets)]


def sliding_windows(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    """`(start, end)` windows of `window` seconds every `stride` seconds covering `duration`.

    The last window is pulled back to end at `duration`, so the tail is never dropped.
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be > 0, got {window} and {stride}")
    if duration <= window:
        return [(0.0, duration)]
    count = math.ceil((duration - window) / stride - 1e-9) + 1
    starts = [min(i * stride, duration - window) for i in range(count)]
    return [(s, s + window) for s in starts]
