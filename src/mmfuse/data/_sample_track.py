"""A mono audio track, resampled as it streams in when asked, cut into windows by time.

Shared by the two readers that cut windows while decoding: `video_stream.read_windows` (a file,
resampled as it streams, whose caller trims what no open window needs) and `live_windows` (a
stream with no plan of windows, kept at its own rate and to a fixed number of the newest
samples). soxr's streaming resampler gives the same samples chunk by chunk as in one call over
the same stretch.
"""

from __future__ import annotations

import math

import numpy as np
import soxr
import torch

# Audio that resumes this far past where the track had got to lost packets on the way: the
# gap is filled with silence so that later samples keep their times.
GAP_S = 0.1


class SampleTrack:
    """Mono samples at `rate`; sample n plays at `t0 + n / rate`, `t0` the first chunk's time.

    The buffer holds samples `dropped ...` onwards. `keep`: hold at most that many of the newest
    samples (a live source); otherwise the caller calls `trim`. `fill_gaps`: a chunk whose time
    is past the track's end by more than `GAP_S` is preceded by silence (packets lost on a
    stream); a file's chunk times are only used for `t0`, as `read_video` cuts a clip's audio.
    """

    def __init__(self, native_rate: int, rate: int, keep: int | None = None, fill_gaps=False):
        self.rate, self.keep, self.fill_gaps = rate, keep, fill_gaps
        self.resampler = (
            None
            if native_rate == rate
            else soxr.ResampleStream(native_rate, rate, 1, dtype="float32", quality="HQ")
        )
        self.t0: float | None = None
        self.dropped = 0  # samples trimmed off the front so far
        self.buffer = np.zeros(0, np.float32)
        self.ended = False

    @property
    def end(self) -> float:
        """The time up to which samples have arrived (-inf before the first)."""
        if self.t0 is None:
            return -math.inf
        return self.t0 + (self.dropped + len(self.buffer)) / self.rate

    def push(self, mono: np.ndarray, time_s: float | None, last: bool = False) -> None:
        if self.t0 is None:
            self.t0 = time_s or 0.0
        elif self.fill_gaps and time_s is not None and time_s > self.end + GAP_S:
            self._silence(round((time_s - self.end) * self.rate))
        if self.resampler is not None:
            mono = self.resampler.resample_chunk(mono, last=last)
        self._append(mono)

    def _silence(self, n: int) -> None:
        if self.keep is not None and n > self.keep:  # a long gap: only its end is kept
            self.dropped += len(self.buffer) + n - self.keep
            self.buffer, n = np.zeros(0, np.float32), self.keep
        self._append(np.zeros(n, np.float32))

    def _append(self, x: np.ndarray) -> None:
        if self.keep is not None and len(x) > self.keep:  # only the newest can be kept
            self.dropped += len(x) - self.keep
            x = x[-self.keep :]
        if len(x):
            self.buffer = np.concatenate([self.buffer, x])
        if self.keep is not None and len(self.buffer) > self.keep:
            self._drop(len(self.buffer) - self.keep)

    def _drop(self, n: int) -> None:
        self.buffer = self.buffer[n:].copy()
        self.dropped += n

    def cut(self, start: float, end: float) -> torch.Tensor:
        """`round((end - start) · rate)` samples from `start`, zero-padded where there are none."""
        want = round((end - start) * self.rate)
        out = np.zeros(want, np.float32)
        if self.t0 is not None:
            first = round((start - self.t0) * self.rate) - self.dropped  # index into the buffer
            lo, hi = max(first, 0), min(first + want, len(self.buffer))
            if hi > lo:
                out[lo - first : hi - first] = self.buffer[lo:hi]
        return torch.from_numpy(out)

    def trim(self, before: float) -> None:
        """Drop the samples that play before `before` (no open window needs them)."""
        if self.t0 is None:
            return
        if math.isinf(before):
            drop = len(self.buffer)
        else:
            drop = math.floor((before - self.t0) * self.rate) - self.dropped
            drop = min(max(drop, 0), len(self.buffer))
        if drop:
            self._drop(drop)
