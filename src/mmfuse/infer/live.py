"""Watch a live source: score windows as they complete, write event lines, skip when behind.

    source = open_source("rtsp://camera/stream")
    summary = watch(scorer, source, window=2.0, stride=1.0, emit=print_line)

`scorer` is a window scorer: `frames` ({input: frames per window}), `audio_rates` ({input:
sample rate}), `extra` (fields every event line carries) and `score(media) -> Decision`. The
anomaly detector's is `mmfuse.anomaly.windows.AnomalyWindows`; a classifier's is
`ClassifierWindows` here. `frame_size(h, w)` scales frames as they are converted, as a clip's
frames are scaled when decoded (`decode_sizer`), so a window gives the tensors a clip would.

Falling behind: each window's `due` time is when its data arrived; when it comes up for scoring
more than `max_lag` seconds later, it is skipped, not queued, until the reader has caught up
(skipping costs no decoding beyond the demuxing every window needs). So a scorer slower than
the stride costs windows, never memory: the only buffers are the reader's, bounded by the
window. One line on stderr per burst of skipped windows says how far behind it was.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mmfuse.data.live_source import LiveSource
from mmfuse.data.live_windows import LiveStats, live_windows
from mmfuse.features.sample import decode_size, resize_to
from mmfuse.infer.detect import fed_inputs
from mmfuse.infer.live_events import Decision, EventTracker
from mmfuse.infer.predictor import Predictor


@dataclass
class WatchSummary:
    scored: int = 0
    skipped: int = 0
    events: int = 0
    worst_lag_s: float = 0.0  # the furthest behind real time a window came up
    ended: str = ""
    peak_frames_held: int = 0
    audio_samples_kept: int = 0
    bad_audio_chunks: int = 0  # non-finite or absurd audio, silenced


class _Skips:
    """Skipped windows in bursts: one stderr line when a burst ends (or the source does)."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.burst: list[float] | None = None  # [first start, last end, worst lag, count]

    def skip(self, start: float, end: float, lag: float) -> None:
        if self.burst is None:
            self.burst = [start, end, lag, 0]
        self.burst[1:] = [end, max(self.burst[2], lag), self.burst[3] + 1]

    def flush(self) -> None:
        if self.burst is not None:
            start, end, lag, count = self.burst
            self.log(
                f"behind real time by {lag:.1f} s: skipped {int(count)} window(s) "
                f"({start:.1f}-{end:.1f} s of the stream) to catch up"
            )
            self.burst = None


def watch(
    scorer,
    source: LiveSource,
    *,
    window: float,
    stride: float,
    emit: Callable[[dict], None],
    max_lag: float | None = None,
    log: Callable[[str], None] | None = None,
) -> WatchSummary:
    """Score `source`'s windows until it ends, emitting event lines; return the counts.

    `max_lag`: seconds behind real time past which windows are skipped (default: one stride,
    at least 1 s) on a stream or device; a file is never skipped, a growing file only when
    `max_lag` is given.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    # A growing file's unread part waits on disk, not in memory: skipped only when asked.
    skipping = source.kind in ("stream", "device") or (source.live and max_lag is not None)
    max_lag = max(stride, 1.0) if max_lag is None else max_lag
    stats, summary, skips = LiveStats(), WatchSummary(), _Skips(log)
    tracker = EventTracker(source.name, scorer.extra)
    windows = live_windows(
        source,
        window=window,
        stride=stride,
        frames=scorer.frames,
        audio_rates=scorer.audio_rates,
        stats=stats,
        frame_size=scorer.frame_size,
    )
    for w in windows:
        lag = time.monotonic() - w.due if source.live else None
        if skipping and lag > max_lag:
            for line in tracker.close():  # what the skipped windows held is unknown
                emit(line)
            skips.skip(w.start, w.end, lag)
            summary.skipped += 1
            summary.worst_lag_s = max(summary.worst_lag_s, lag)
            continue
        skips.flush()
        decision = scorer.score(w.load())
        summary.scored += 1
        latency = time.monotonic() - w.due if source.live else None
        for line in tracker.update(w.start, w.end, decision, latency):
            emit(line)
    skips.flush()
    for line in tracker.close():
        emit(line)
    summary.events, summary.ended = tracker.events, stats.ended
    summary.peak_frames_held = stats.peak_frames_held
    summary.audio_samples_kept = stats.audio_samples_kept
    summary.bad_audio_chunks = stats.bad_audio_chunks
    return summary


def decode_sizer(specs) -> Callable[[int, int], tuple[int, int] | None] | None:
    """`(h, w) → size` to decode frames at, as `SampleLoader` decodes a clip for these encoder
    specs (the largest they need; a smaller one is resized further by its transform)."""
    if not specs:
        return None
    short = max(resize_to(spec) for spec in specs)
    return lambda height, width: decode_size(height, width, short)


def window_tensor(transform, x: torch.Tensor, frames: bool) -> torch.Tensor:
    """A window's media for one input → its encoder's tensor, through the input's eval
    transform as a clip's would go: frames (T×C×H×W uint8, every one kept) → F×C×S×S, or
    mono samples → the audio encoder's input."""
    with torch.no_grad():
        if frames:
            return transform(x, indices=torch.arange(x.shape[0]))
        return transform(x)


class ClassifierWindows:
    """A classifier as a window scorer: a window's label is its most probable class, an event
    a run of one class other than `background`."""

    def __init__(self, predictor: Predictor, background: str | None = None):
        video, audio = fed_inputs(predictor)
        self.predictor, self.background = predictor, background
        self.frames = {name: predictor.specs[name].frames for name in video}
        self.audio_rates = {name: predictor.specs[name].sample_rate for name in audio}
        self.frame_size = decode_sizer([predictor.specs[name] for name in video])
        self.extra = {"model": "classifier"}

    def score(self, media: dict[str, torch.Tensor]) -> Decision:
        transforms = self.predictor.loader.transforms
        sample = {
            name: window_tensor(transforms[name], x, name in self.frames)
            for name, x in media.items()
        }
        prediction = self.predictor.predict_tensors([sample])[0]
        label = None if prediction.label == self.background else prediction.label
        probabilities = prediction.probabilities
        return Decision(label, probabilities[prediction.label], probabilities, prediction.used)


__all__ = ["ClassifierWindows", "WatchSummary", "decode_sizer", "watch", "window_tensor"]
