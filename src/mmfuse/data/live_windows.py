"""Windows of a live source (stream, device, growing file), cut as its data arrives.

    for w in live_windows(source, window=2.0, stride=1.0, frames={"video": 8},
                          audio_rates={"video_audio": 16000}):
        if time.monotonic() - w.due > 2.0:
            continue                # behind: skipping costs nothing, nothing was cut yet
        media = w.load()            # {name: T×C×H×W uint8 frames | N float32 mono samples}

Windows lie every `stride` seconds from the source's first timestamp, `window` long, and come
out in order as soon as the data they span has arrived. Times are seconds since that first
timestamp. Memory is bounded by the window, never by how long the source runs: a decoded frame
is kept (as RGB) only when a window not yet out samples it, and the sound's newest samples
sit in a fixed-size track at the stream's rate, each window's stretch resampled as its clip's.
Unlike `video_stream.read_windows`, there is no plan of windows up front, since a stream has no
duration.

`due` is when the window's last data arrived, on `time.monotonic()`'s clock, estimated from the
freshest arrivals seen (the least `arrival - media time`), so `now - due` is how far behind
real time the caller is when it handles the window.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import av
import numpy as np
import torch

from mmfuse.data._audio_checks import check_samples
from mmfuse.data._frames import frame_to_rgb, stack_chw
from mmfuse.data._sample_track import SampleTrack
from mmfuse.data._video_times import sample_times
from mmfuse.data.audio import finish_audio
from mmfuse.data.live_source import LiveSource
from mmfuse.data.video_stream import AUDIO_SKEW_S
from mmfuse.errors import MediaError

_EPS = 1e-9
# A timestamp this far from its stream's previous one is a discontinuity (a restarted camera,
# a wrapped MPEG-TS clock), re-joined so that window times keep running on.
JUMP_S = 5.0
# How fast the arrival clock estimate may drift (s per s): absorbs a sender whose clock runs
# slow against ours over hours, far below the rate at which a reader falls behind.
CLOCK_DRIFT = 1e-3


@dataclass
class LiveStats:
    frames_decoded: int = 0
    windows: int = 0  # windows that came out (handled or skipped by the caller)
    peak_frames_held: int = 0  # RGB frames kept for windows not yet out
    audio_samples_kept: int = 0  # the audio track's fixed bound, at the stream's rate
    jumps: int = 0  # timestamp discontinuities re-joined
    bad_audio_chunks: int = 0  # decoded audio with NaN, infinity or absurd peaks: silenced
    ended: str = ""  # why reading stopped


@dataclass
class LiveWindow:
    index: int
    start: float  # seconds since the source's first timestamp
    end: float
    due: float  # time.monotonic() when its last data arrived (estimated)
    load: Callable[[], dict[str, torch.Tensor]]  # valid until the next window is asked for


class _Reader:
    """One pass over a live source: frames kept where windows sample them, sound in a track."""

    def __init__(self, source, window, stride, frames, audio_rates, stats, frame_size=None):
        self.source, self.window, self.stride = source, window, stride
        self.frame_size = frame_size
        self.frame_counts, self.audio_rates = dict(frames), dict(audio_rates)
        self.stats = stats
        self.origin: float | None = None  # stream time of window 0's start
        self.next = 0  # index of the next window to come out
        self.kept: deque[tuple[float, np.ndarray]] = deque()  # sampled H×W×3 frames, by time
        self.previous: tuple[float, av.VideoFrame] | None = None  # on screen until the next
        self.rotation = 0
        self.track: SampleTrack | None = None  # the sound's newest samples, at its own rate
        self.last: dict[str, float] = {}  # stream kind → its last (shifted) time
        self.shift: dict[str, float] = {}
        self.offset = math.inf  # least (arrival - stream time) seen: the arrival clock
        self.offset_at = time.monotonic()

    # -- clocks ---------------------------------------------------------------------------
    def _time(self, kind: str, raw: float, step: float) -> float:
        t = raw + self.shift.get(kind, 0.0)
        last = self.last.get(kind)
        if last is not None and not (last - 1.0 <= t <= last + JUMP_S):
            self.shift[kind] = self.shift.get(kind, 0.0) + last + step - t
            t = last + step
            self.stats.jumps += 1
        self.last[kind] = t
        # Window times run from the first picture when there are pictures (else the first
        # sound); the audio track cuts them from its own first sample (`_shift`), as a clip's
        # frames and sound track are each read from their own start.
        if self.origin is None and (kind == "video" or not self.frame_counts):
            self.origin = t
        now = time.monotonic()
        drifted = self.offset + CLOCK_DRIFT * (now - self.offset_at)
        self.offset, self.offset_at = min(drifted, now - t), now
        return t

    def _start(self, k: int) -> float:
        return self.origin + k * self.stride

    # -- frames ---------------------------------------------------------------------------
    def _sampled(self, lo: float, hi: float) -> bool:
        """Whether a window not yet out samples a time in [lo, hi)."""
        if self.origin is None or not self.frame_counts:
            return False
        k = max(self.next, math.floor((lo - self.origin - self.window) / self.stride))
        while self._start(k) < hi:
            start = self._start(k)
            for count in self.frame_counts.values():
                if any(
                    lo - _EPS <= s < hi - _EPS
                    for s in sample_times(start, start + self.window, count)
                ):
                    return True
            k += 1
        return False

    def _on_picture(self, frame: av.VideoFrame, t: float) -> None:
        self.stats.frames_decoded += 1
        if self.previous is None:
            self.rotation = round((frame.rotation or 0) / 90.0) * 90 % 360
            self._keep(frame, -math.inf)  # shown at every sample time up to the next frame
        elif self.previous[0] > -math.inf:
            before_t, before = self.previous
            if self._sampled(before_t, t):
                self._keep(before, before_t)
        self.previous = (t if self.previous else -math.inf, frame)

    def _keep(self, frame: av.VideoFrame, t: float) -> None:
        size = None if self.frame_size is None else self.frame_size(frame.height, frame.width)
        self.kept.append((t, frame_to_rgb(frame, self.rotation, size)))
        self.stats.peak_frames_held = max(self.stats.peak_frames_held, len(self.kept))

    def _pick(self, times: list[float]) -> torch.Tensor:
        chosen, i = [], 0
        for s in times:
            while i + 1 < len(self.kept) and self.kept[i + 1][0] <= s + _EPS:
                i += 1
            chosen.append(self.kept[i][1])
        return stack_chw(chosen)  # T×C×H×W

    # -- audio ----------------------------------------------------------------------------
    def _open_track(self, stream) -> None:
        native = stream.codec_context.sample_rate or stream.rate
        self.converter = av.AudioResampler(
            format="fltp", layout=stream.codec_context.layout.name, rate=native
        )
        seconds = self.window + self.stride + AUDIO_SKEW_S + 1.0
        # Kept at the stream's own rate; each window's stretch is resampled as a clip of it is
        # (`finish_audio`), so that it gives the samples the clip gives to the last one (a
        # streaming resampler differs at the window's edges, which moved anomaly scores).
        self.track = SampleTrack(native, native, math.ceil(seconds * native), fill_gaps=True)
        self.stats.audio_samples_kept = self.track.keep

    def _on_sound(self, frame: av.AudioFrame, t: float) -> None:
        for out in self.converter.resample(frame):
            chunk = out.to_ndarray().reshape(-1, out.samples)
            try:
                check_samples(self.source.name, chunk)
            except MediaError:
                # One bad packet must not stop a watch, nor reach the encoder: silence instead.
                chunk = np.zeros_like(chunk)
                self.stats.bad_audio_chunks += 1
            mono = chunk.mean(axis=0, dtype=np.float32)
            self.track.push(mono, t)

    # -- windows --------------------------------------------------------------------------
    def _ready(self, k: int, ended: bool) -> bool:
        end = self._start(k) + self.window
        picture = self.last.get("video")
        if self.frame_counts and not ended and (picture is None or picture < end - _EPS):
            return False
        track = self.track
        waiting = track is not None and track.end < end + self._shift() - 0.5 / track.rate
        return not waiting or ended or (picture is not None and picture > end + AUDIO_SKEW_S)

    def _window(self, k: int) -> LiveWindow:
        start = self._start(k)
        end = start + self.window

        def load() -> dict[str, torch.Tensor]:
            media = {}
            if self.kept:
                for name, count in self.frame_counts.items():
                    media[name] = self._pick(sample_times(start, end, count))
            if self.track is not None:
                shift, native = self._shift(), self.track.rate
                x = self.track.cut(start + shift, end + shift).numpy()[None]
                for name, rate in self.audio_rates.items():
                    media[name] = finish_audio(x, native, rate, True, self.window)[0]
            return media

        due = end + self.offset
        return LiveWindow(k, start - self.origin, end - self.origin, due, load)

    def _shift(self) -> float:
        """Window time + this = the audio track's time: a stream's sound may start a little
        before or after its first picture (MPEG-TS: often tens of ms)."""
        t0 = self.track.t0 if self.track is not None else None
        return 0.0 if t0 is None else t0 - self.origin

    def _data_end(self, step: float) -> float:
        """Where the data ends: the last frame's end, or the audio's if there is no video."""
        if self.frame_counts and "video" in self.last:
            return self.last["video"] + step
        return self.track.end if self.track is not None else -math.inf

    def _finished(self, ended: bool = False, step: float = 0.0) -> Iterator[LiveWindow]:
        while self.origin is not None and self._ready(self.next, ended):
            if ended and self._start(self.next) + self.window > self._data_end(step) + 0.1:
                return  # it would reach past the end of the data: a frozen frame and silence
            yield self._window(self.next)
            self.stats.windows += 1
            self.next += 1
            following = self._start(self.next)
            while len(self.kept) > 1 and self.kept[1][0] <= following + _EPS:
                self.kept.popleft()

    def run(self) -> Iterator[LiveWindow]:
        container = self.source.container
        vs = container.streams.video[0] if container.streams.video and self.frame_counts else None
        aus = container.streams.audio[0] if container.streams.audio and self.audio_rates else None
        self.frame_counts = self.frame_counts if vs is not None else {}
        streams = [s for s in (vs, aus) if s is not None]
        if aus is not None:
            self._open_track(aus)
        step = 1.0 / float(vs.average_rate or vs.guessed_rate or 25) if vs is not None else 0.0
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if frame.time is None:
                        continue
                    if isinstance(frame, av.VideoFrame):
                        self._on_picture(frame, self._time("video", frame.time, step))
                    else:
                        self._on_sound(frame, self._time("audio", frame.time, 0.0))
                yield from self._finished()
            self.stats.ended = "end of the source"
        except av.ExitError:
            self.stats.ended = "no data for the --idle time"
        except av.FFmpegError as e:
            self.stats.ended = f"reading stopped: {e}"
        last = self.previous
        if last is not None and last[0] > -math.inf and self._sampled(last[0], math.inf):
            self._keep(self.previous[1], self.previous[0])
        yield from self._finished(ended=True, step=step)


def live_windows(
    source: LiveSource,
    *,
    window: float,
    stride: float,
    frames: Mapping[str, int],
    audio_rates: Mapping[str, int],
    stats: LiveStats | None = None,
    frame_size: Callable[[int, int], tuple[int, int] | None] | None = None,
) -> Iterator[LiveWindow]:
    """Yield the source's windows in order as their data arrives, until the source ends.

    `frames[name]`: frames sampled per window for that name (as `read_video` samples a clip);
    `audio_rates[name]`: the rate of that name's mono track. Names whose stream the source
    lacks are left out of `load()`'s dict; `stats.ended` says why reading stopped.
    `frame_size(height, width)`: the `(height, width)` to scale a kept frame to as it is
    converted (as `read_video(size=...)` does for a clip), or None to keep it as it is.
    """
    stats = stats if stats is not None else LiveStats()
    with source.container:
        reader = _Reader(source, window, stride, frames, audio_rates, stats, frame_size)
        yield from reader.run()


__all__ = ["CLOCK_DRIFT", "JUMP_S", "LiveStats", "LiveWindow", "live_windows"]
