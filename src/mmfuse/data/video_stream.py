"""Read many time windows of one video in a single front-to-back pass, in bounded memory.

`read_windows(path, windows, frames={"video": 8}, audio_rates={"track": 16000})` yields, window
by window and in order, each window's frames (the `frames[name]` on screen at its sample times,
the centres of equal segments, as `read_video` picks them) and its stretch of the audio track.

The file is decoded once, whatever its length, and the reader keeps only what open windows
still need: a frame is converted to RGB only when some open window samples it and is dropped
when the last such window is done; audio is resampled as it streams (soxr, the resampler
`read_audio` uses, gives the same samples chunk by chunk as in one call) into a buffer trimmed
to the windows still open. Memory depends on the window, the stride and the frame size, never
on the length. Reading each window with `read_video` instead decodes the stretch around every
window once per overlapping window and reopens the file twice per window.
"""

from __future__ import annotations

import heapq
import math
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch

from mmfuse.data._audio_checks import check_samples
from mmfuse.data._sample_track import SampleTrack
from mmfuse.data.audio import too_long
from mmfuse.data.budgets import Budgets, resolve
from mmfuse.data.image import check_image_size
from mmfuse.data.modalities import check_file, unreadable
from mmfuse.data.video import frame_to_rgb, probe_video, sample_times
from mmfuse.errors import MediaError

# A frame is on screen at time t when its timestamp is at most t plus this (as in read_video).
_EPS = 1e-9
# How far the audio may trail the picture in the file before a window stops waiting for it and
# zero-pads: FFmpeg muxers interleave streams within 10 s (their default max_interleave_delta).
AUDIO_SKEW_S = 10.0


@dataclass
class StreamStats:
    """What one pass over the file held at most and decoded: the memory bound, measured."""

    frames_decoded: int = 0
    frames_converted: int = 0  # decoded frames some window sampled (converted to RGB once)
    peak_frames_held: int = 0  # RGB frames held at once
    peak_windows_open: int = 0  # windows waiting for frames or audio at once
    peak_audio_samples_held: int = 0  # resampled audio samples buffered at once
    # Where the media stopped before the header's duration (windows after it are left out),
    # and the decoder's complaint if it stopped on damaged data.
    truncated_at: float | None = None
    error: str | None = None


def video_duration(path: str | os.PathLike) -> float:
    """The header's duration (video stream, else audio stream, else container) in seconds.

    A file whose header is silent is probed (one demux pass, no decoding).
    """
    path = check_file(path, max_bytes=None)
    container = _open(path)
    with container:
        stream = (container.streams.video or container.streams.audio or [None])[0]
        duration = None
        if stream is not None and stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
    if duration is None or duration <= 0:
        duration = probe_video(path, max_bytes=None).duration
    return duration


def read_windows(
    path: str | os.PathLike,
    windows: Sequence[tuple[float, float]],
    *,
    frames: Mapping[str, int],
    audio_rates: Mapping[str, int],
    stats: StreamStats | None = None,
    budgets: Budgets | None = None,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield `(window index, {name: tensor})` in order, decoding the file once.

    Each name in `frames` gets the window's `frames[name]` frames, T×C×H×W uint8; each name in
    `audio_rates` gets the window's audio track, mono float32 at `audio_rates[name]` Hz. A file
    with no video stream leaves out the frame names (and one with no audio track, the audio
    names), unless it has neither. In a file that ends before its header says, the windows
    reaching past its end are left out (and `stats.truncated_at` tells where it ended).
    One window's frames are held to the budgets (`budgets`, default `Budgets.from_env()`):
    each frame to the image budgets, frames × pixels to `video_pixels`, its audio to
    `audio_seconds`; over them is `MediaError("too-large")` before any frame is decoded.
    """
    stats = stats if stats is not None else StreamStats()
    limits = resolve(budgets)
    path = check_file(path, max_bytes=None)
    container = _open(path)
    with container:
        vs = container.streams.video[0] if container.streams.video and frames else None
        aus = container.streams.audio[0] if container.streams.audio and audio_rates else None
        if vs is None and aus is None:
            found = "no video stream" if frames else "no audio track"
            raise MediaError(
                path, "wrong-modality", f"the model reads {list(frames or audio_rates)}: {found}"
            )
        frames = frames if vs is not None else {}
        audio_rates = audio_rates if aus is not None else {}
        _check_budgets(path, vs, frames, audio_rates, windows, limits)
        yield from _Reader(path, windows, frames, audio_rates, stats).run(container, vs, aus)


def _check_budgets(path, vs, frames, audio_rates, windows, budgets: Budgets) -> None:
    """A window's frames and audio within the budgets, from the header alone."""
    longest = max((end - start for start, end in windows), default=0.0)
    if audio_rates and longest > budgets.audio_seconds:
        raise too_long(path, longest, budgets.audio_seconds)
    if not frames:
        return
    w, h = vs.codec_context.width, vs.codec_context.height
    check_image_size(path, (w, h), budgets)
    count = max(frames.values())
    if count * w * h > budgets.video_pixels:
        raise MediaError(
            path,
            "too-large",
            f"{count} frames of {w}×{h} a window is over the {budgets.video_pixels}-pixel "
            f"video budget; sample fewer frames, or {budgets.how_to_raise('video_pixels')}",
        )


@dataclass
class _Window:
    index: int
    start: float
    end: float
    slots: dict[str, list[int]] = field(default_factory=dict)  # video name → frame indices
    missing: int = 0  # video slots not yet filled


class _Reader:
    """One sequential pass: frames to the windows that sample them, audio to a trimmed buffer."""

    def __init__(self, path, windows, frames, audio_rates, stats):
        self.path = path
        self.plan = list(windows)
        self.frame_counts, self.audio_rates = dict(frames), dict(audio_rates)
        self.stats = stats
        self.next_window = 0  # index into plan of the next window to open
        self.open: deque[_Window] = deque()
        self.pending: list[tuple[float, int, str, int]] = []  # heap: (time, window, name, slot)
        self.by_index: dict[int, _Window] = {}
        self.frames: dict[int, torch.Tensor] = {}  # frame index → C×H×W uint8
        self.refs: dict[int, int] = {}  # frame index → window slots holding it
        self.previous: tuple[int, av.VideoFrame] | None = None  # on screen until the next one
        self.picture_time: float | None = None
        self.rotation: int | None = None
        self.tracks: dict[int, SampleTrack] = {}  # sample rate → track
        self.converter = None

    def run(self, container, vs, aus) -> Iterator[tuple[int, dict]]:
        streams = [s for s in (vs, aus) if s is not None]
        if vs is not None:
            vs.thread_type = "AUTO"
            start_pts, time_base = vs.start_time or 0, vs.time_base
            step = 1.0 / float(vs.average_rate or vs.guessed_rate or 25)
        if aus is not None:
            native = aus.codec_context.sample_rate or aus.rate
            layout = aus.codec_context.layout.name
            self.converter = av.AudioResampler(format="fltp", layout=layout, rate=native)
            for rate in self.audio_rates.values():
                self.tracks.setdefault(rate, SampleTrack(native, rate))
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        if frame.pts is None:  # no timestamp: one frame after the last
                            t = (-step if self.picture_time is None else self.picture_time) + step
                        else:
                            t = float((frame.pts - start_pts) * time_base)
                        self._on_picture(frame, t)
                    else:
                        self._on_sound(frame)
                yield from self._finished()
                if self.next_window >= len(self.plan) and not self.open:
                    return  # every window done: the rest of the file is not needed
        except av.FFmpegError as e:
            # Damaged data part-way (a recording cut off): keep what was decoded before it, as
            # probe_video does, rather than lose hours of windows to the last few seconds.
            self.stats.error = f"decoding stopped part-way: {e}"
        self._end_of_file(step if vs is not None else 0.0)
        yield from self._finished()

    # -- video ----------------------------------------------------------------------------
    def _on_picture(self, frame: av.VideoFrame, t: float) -> None:
        index = self.stats.frames_decoded
        self.stats.frames_decoded += 1
        if self.rotation is None:
            self.rotation = round((frame.rotation or 0) / 90.0) * 90 % 360
        self._open_until(t)
        # Sample times before t show the previous frame (the first frame, before it arrives).
        shown = self.previous or (index, frame)
        while self.pending and self.pending[0][0] + _EPS < t:
            self._fill(heapq.heappop(self.pending), shown)
        self.previous = (index, frame)
        self.picture_time = t

    def _open_until(self, t: float) -> None:
        """Open every window that starts by `t`: register its sample times per video name."""
        while self.next_window < len(self.plan) and self.plan[self.next_window][0] <= t:
            start, end = self.plan[self.next_window]
            w = _Window(self.next_window, start, end)
            for name, count in self.frame_counts.items():
                times = sample_times(start, end, count)
                w.slots[name] = [-1] * len(times)
                w.missing += len(times)
                for slot, s in enumerate(times):
                    heapq.heappush(self.pending, (s, w.index, name, slot))
            self.open.append(w)
            self.by_index[w.index] = w
            self.next_window += 1
        self.stats.peak_windows_open = max(self.stats.peak_windows_open, len(self.open))

    def _fill(self, item: tuple[float, int, str, int], shown: tuple[int, av.VideoFrame]) -> None:
        _, window, name, slot = item
        index, frame = shown
        if index not in self.frames:
            rgb = frame_to_rgb(frame, self.rotation or 0, None)  # H×W×3
            self.frames[index] = torch.from_numpy(rgb).permute(2, 0, 1)  # C×H×W
            self.refs[index] = 0
            self.stats.frames_converted += 1
            self.stats.peak_frames_held = max(self.stats.peak_frames_held, len(self.frames))
        self.refs[index] += 1
        w = self.by_index[window]
        w.slots[name][slot] = index
        w.missing -= 1

    # -- audio ----------------------------------------------------------------------------
    def _on_sound(self, frame: av.AudioFrame) -> None:
        for out in self.converter.resample(frame):
            chunk = out.to_ndarray().reshape(-1, out.samples)
            check_samples(self.path, chunk)
            mono = chunk.mean(axis=0, dtype=np.float32)
            for track in self.tracks.values():
                track.push(mono, frame.time)
        held = sum(len(t.buffer) for t in self.tracks.values())
        self.stats.peak_audio_samples_held = max(self.stats.peak_audio_samples_held, held)

    # -- windows --------------------------------------------------------------------------
    def _end_of_file(self, step: float) -> None:
        for track in self.tracks.values():
            track.push(np.zeros(0, np.float32), None, last=True)  # what the resampler holds
            track.ended = True
        if self.frame_counts and self.previous is None:
            detail = self.stats.error or "the video stream holds no frames"
            raise MediaError(self.path, "truncated", detail)
        if self.frame_counts:
            end, slack = self.picture_time + step, step  # the last frame's end, one frame
        else:
            end, slack = self._audio_time(), 0.1  # AAC tracks end a few ms off the header
        # A file shorter than its header: a window reaching past the media's end would show a
        # frozen frame and silence, so it is left out (unless it is the only one).
        keep = max(1, sum(1 for w in self.plan if w[1] <= end + slack))
        if keep < len(self.plan) or self.stats.error:
            self.stats.truncated_at = round(end, 3)
        self.plan = self.plan[:keep]
        self._open_until(math.inf)
        while self.pending:  # sample times after the last frame show the last frame
            self._fill(heapq.heappop(self.pending), self.previous)
        while self.open and self.open[-1].index >= keep:
            self._release(self.open.pop())

    def _finished(self) -> Iterator[tuple[int, dict]]:
        if not self.open and not self.frame_counts:
            self._open_until(self._audio_time())
        while self.open and self._complete(self.open[0]):
            w = self.open.popleft()
            yield w.index, self._window_media(w)
            if not self.frame_counts:
                self._open_until(self._audio_time())
        keep = self.open[0].start if self.open else self._next_start()
        for track in self.tracks.values():
            track.trim(keep)

    def _audio_time(self) -> float:
        return max((t.end if t.t0 is not None else 0.0 for t in self.tracks.values()), default=0.0)

    def _next_start(self) -> float:
        return self.plan[self.next_window][0] if self.next_window < len(self.plan) else math.inf

    def _complete(self, w: _Window) -> bool:
        if w.missing:
            return False
        return all(self._track_ready(t, w.end) for t in self.tracks.values())

    def _track_ready(self, track: SampleTrack, end: float) -> bool:
        if track.ended or track.end >= end - 0.5 / track.rate:
            return True
        return self.picture_time is not None and self.picture_time > end + AUDIO_SKEW_S

    def _window_media(self, w: _Window) -> dict[str, torch.Tensor]:
        media = {}
        for name in self.frame_counts:
            media[name] = torch.stack([self.frames[i] for i in w.slots[name]])  # T×C×H×W uint8
        for name, rate in self.audio_rates.items():
            media[name] = self.tracks[rate].cut(w.start, w.end)  # N float32
        self._release(w)
        return media

    def _release(self, w: _Window) -> None:
        """Let go of a window's frames; a frame no open window samples any more is dropped."""
        self.by_index.pop(w.index, None)
        for indices in w.slots.values():
            for i in indices:
                self.refs[i] -= 1
                if self.refs[i] == 0:
                    del self.refs[i], self.frames[i]


def _open(path: Path) -> av.container.InputContainer:
    # Unlike read_video's opener, any extension: a model with audio inputs only reads a track.
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise unreadable(path, "video", e) from None


__all__ = ["AUDIO_SKEW_S", "StreamStats", "read_windows", "video_duration"]
