"""Decoded video frames as arrays: RGB conversion (scaled, turned upright) and clip stacking."""

from __future__ import annotations

import av
import numpy as np
import torch


def frame_to_rgb(frame: av.VideoFrame, rotation: int, size: tuple[int, int] | None) -> np.ndarray:
    """A decoded frame as H×W×3 uint8 RGB, scaled to `size` (as displayed) and turned upright."""
    if size is not None:
        h, w = size
        if rotation % 180 != 0:
            h, w = w, h  # scale before rotating, so the displayed size is what was asked
        frame = frame.reformat(width=w, height=h, format="rgb24")
    arr = frame.to_ndarray(format="rgb24")  # H×W×3
    if rotation % 360 != 0:
        arr = np.ascontiguousarray(np.rot90(arr, k=(rotation // 90) % 4))
    return arr


def stack_chw(frames: list[np.ndarray]) -> torch.Tensor:
    """H×W×3 frames (a frame sampled twice is one array) → T×3×H×W uint8, one allocation."""
    h, w = frames[0].shape[:2]
    out = np.empty((len(frames), 3, h, w), np.uint8)
    for t, frame in enumerate(frames):
        out[t] = frame.transpose(2, 0, 1)
    return torch.from_numpy(out)
