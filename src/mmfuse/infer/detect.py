"""Find events in a long video: classify sliding windows, merge runs of one class into events.

`detect_events(model_dir, "match.mp4", window=2.0, stride=1.0)` slides a `window`-second window
every `stride` seconds over the video, feeds each window to the model as one sample and returns a
timeline: every window's class probabilities, and the events (runs of windows of one class).

The file is decoded once, front to back, whatever its length. Each window needs only the
`VideoSpec.frames` frames on screen at its sample times (the centres of equal segments, as
`read_video` picks them) and its stretch of the audio track, so the reader keeps no more than
that: a frame is converted to RGB only when some open window samples it and is dropped when the
last such window is done; audio is resampled as it streams (soxr, the resampler `read_audio`
uses, gives the same samples chunk by chunk as in one call) into a buffer trimmed to the windows
still open. Memory depends on the window, the stride and the frame size, never on the length.
Reading each window with `read_video` instead decodes the stretch around every window once per
overlapping window and reopens the file twice per window (see `benchmarks/detect.py`).

Which model inputs are fed: a video-modality input gets the window's frames; an audio-modality
input reading the same column as a video input (`InputConfig(column="video", modality="audio")`)
gets the window's audio track, as does every audio input of a model with no video input; any
other input is absent (mask False), as in `mmfuse predict` with a missing file.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np
import soxr
import torch

from mmfuse.data.modalities import check_file, unreadable
from mmfuse.data.video import _to_rgb, probe_video, sample_times, sliding_windows
from mmfuse.errors import MediaError
from mmfuse.infer.predictor import Predictor
from mmfuse.model.config import ConfigError

# A frame is on screen at time t when its timestamp is at most t plus this (as in read_video).
_EPS = 1e-9
# How far the audio may trail the picture in the file before a window stops waiting for it and
# zero-pads: FFmpeg muxers interleave streams within 10 s (their default max_interleave_delta).
AUDIO_SKEW_S = 10.0


class DetectError(ConfigError):
    """The detection cannot run as asked: a bad flag value, or a model it cannot feed."""


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


@dataclass
class _Window:
    index: int
    start: float
    end: float
    slots: dict[str, list[int]] = field(default_factory=dict)  # video input → frame indices
    missing: int = 0  # video slots not yet filled


class _AudioTrack:
    """The audio stream, mono, resampled to `rate` as it arrives; a buffer trimmed from the front.

    Sample n of the stream plays at `t0 + n / rate`, `t0` being the first decoded frame's time
    (the file's own clock, as `read_video` cuts the audio of a window); the buffer holds samples
    `dropped ...` onwards.
    """

    def __init__(self, native_rate: int, rate: int):
        self.rate = rate
        self.stream = (
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
        """The time up to which samples have arrived."""
        return (self.t0 or 0.0) + (self.dropped + len(self.buffer)) / self.rate

    def push(self, mono: np.ndarray, time_s: float | None, last: bool = False) -> None:
        if self.t0 is None:
            self.t0 = time_s or 0.0
        if self.stream is not None:
            mono = self.stream.resample_chunk(mono, last=last)
        if len(mono):
            self.buffer = np.concatenate([self.buffer, mono])

    def ready(self, end: float, picture_time: float | None) -> bool:
        if self.ended or (self.t0 is not None and self.end >= end - 0.5 / self.rate):
            return True
        return picture_time is not None and picture_time > end + AUDIO_SKEW_S

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
            self.buffer = self.buffer[drop:].copy()
            self.dropped += drop


def fed_inputs(predictor: Predictor) -> tuple[list[str], list[str]]:
    """`(video inputs, audio inputs)` of the model that a video file feeds; the rest are absent."""
    video = [n for n in predictor.names if predictor.modalities[n] == "video"]
    audio = [n for n in predictor.names if predictor.modalities[n] == "audio"]
    if video:
        columns = {predictor.config.inputs[n].column for n in video}
        audio = [n for n in audio if predictor.config.inputs[n].column in columns]
    if not video and not audio:
        described = {n: predictor.modalities[n] for n in predictor.names}
        raise DetectError(
            f"the model in {predictor.model_dir} has no video or audio input (its inputs: "
            f"{described}); detect feeds a video's frames and audio track, so train a model "
            "with a video column (and, for the track, an audio input on that column)"
        )
    return video, audio


def video_windows(
    video_path: str | os.PathLike, window: float, stride: float
) -> tuple[float, list[tuple[float, float]]]:
    """`(duration, windows)`: the `(start, end)` windows `sliding_windows` lays over the file.

    The duration is the header's (video stream, else audio stream, else container); a file whose
    header is silent is probed (one demux pass, no decoding).
    """
    _check_window(window, stride)
    path = check_file(video_path, max_bytes=None)
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
    return duration, sliding_windows(duration, window, stride)


def stream_windows(
    predictor: Predictor,
    video_path: str | os.PathLike,
    windows: Sequence[tuple[float, float]],
    *,
    stats: StreamStats | None = None,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield `(window index, {input name: preprocessed tensor})` in order, decoding the file once.

    The tensors are exactly what `Predictor.predict_tensors` takes: a window's frames through the
    input's video transform, its audio track through the input's audio transform. In a file
    that ends before its header says, the windows reaching past its end are left out (and
    `stats.truncated_at` tells where it ended).
    """
    stats = stats if stats is not None else StreamStats()
    video_inputs, audio_inputs = fed_inputs(predictor)
    path = check_file(video_path, max_bytes=None)
    container = _open(path)
    with container:
        vs = container.streams.video[0] if container.streams.video and video_inputs else None
        aus = container.streams.audio[0] if container.streams.audio and audio_inputs else None
        if vs is None and aus is None:
            found = "no video stream" if video_inputs else "no audio track"
            raise MediaError(
                path, "wrong-modality", f"the model reads {video_inputs or audio_inputs}: {found}"
            )
        video_inputs = video_inputs if vs is not None else []
        audio_inputs = audio_inputs if aus is not None else []
        yield from _Streamer(predictor, path, windows, video_inputs, audio_inputs, stats).run(
            container, vs, aus
        )


class _Streamer:
    """One sequential pass: frames to the windows that sample them, audio to a trimmed buffer."""

    def __init__(self, predictor, path, windows, video_inputs, audio_inputs, stats):
        self.predictor = predictor
        self.path = path
        self.plan = list(windows)
        self.video_inputs, self.audio_inputs = video_inputs, audio_inputs
        self.stats = stats
        self.transforms = predictor.loader.transforms
        self.next_window = 0  # index into plan of the next window to open
        self.open: deque[_Window] = deque()
        self.pending: list[tuple[float, int, str, int]] = []  # heap: (time, window, input, slot)
        self.by_index: dict[int, _Window] = {}
        self.frames: dict[int, torch.Tensor] = {}  # frame index → C×H×W uint8
        self.refs: dict[int, int] = {}  # frame index → window slots holding it
        self.previous: tuple[int, av.VideoFrame] | None = None  # on screen until the next one
        self.picture_time: float | None = None
        self.rotation: int | None = None
        self.tracks: dict[int, _AudioTrack] = {}  # model sample rate → track
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
            for name in self.audio_inputs:
                rate = self.predictor.specs[name].sample_rate
                self.tracks.setdefault(rate, _AudioTrack(native, rate))
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
        """Open every window that starts by `t`: register its sample times per video input."""
        while self.next_window < len(self.plan) and self.plan[self.next_window][0] <= t:
            start, end = self.plan[self.next_window]
            w = _Window(self.next_window, start, end)
            for name in self.video_inputs:
                times = sample_times(start, end, self.predictor.specs[name].frames)
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
            rgb = _to_rgb(frame, self.rotation or 0, None)  # H×W×3
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
            mono = out.to_ndarray().reshape(-1, out.samples).mean(axis=0, dtype=np.float32)
            for track in self.tracks.values():
                track.push(mono, frame.time)
        self._note_audio()

    def _note_audio(self) -> None:
        held = sum(len(t.buffer) for t in self.tracks.values())
        self.stats.peak_audio_samples_held = max(self.stats.peak_audio_samples_held, held)

    # -- windows --------------------------------------------------------------------------
    def _end_of_file(self, step: float) -> None:
        for track in self.tracks.values():
            track.push(np.zeros(0, np.float32), None, last=True)  # what the resampler holds
            track.ended = True
        if self.video_inputs and self.previous is None:
            detail = self.stats.error or "the video stream holds no frames"
            raise MediaError(self.path, "truncated", detail)
        if self.video_inputs:
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
        if not self.open and not self.video_inputs:
            self._open_until(self._audio_time())
        while self.open and self._complete(self.open[0]):
            w = self.open.popleft()
            yield w.index, self._inputs(w)
            if not self.video_inputs:
                self._open_until(self._audio_time())
        keep = self.open[0].start if self.open else self._next_start()
        for track in self.tracks.values():
            track.trim(keep)

    def _audio_time(self) -> float:
        return max((t.end for t in self.tracks.values()), default=0.0)

    def _next_start(self) -> float:
        return self.plan[self.next_window][0] if self.next_window < len(self.plan) else math.inf

    def _complete(self, w: _Window) -> bool:
        if w.missing:
            return False
        return all(t.ready(w.end, self.picture_time) for t in self.tracks.values())

    def _inputs(self, w: _Window) -> dict[str, torch.Tensor]:
        sample = {}
        with torch.no_grad():
            for name in self.video_inputs:
                clip = torch.stack([self.frames[i] for i in w.slots[name]])  # T×C×H×W uint8
                indices = torch.arange(clip.shape[0])
                sample[name] = self.transforms[name](clip, indices=indices)  # F×C×S×S
            for name in self.audio_inputs:
                track = self.tracks[self.predictor.specs[name].sample_rate]
                sample[name] = self.transforms[name](track.cut(w.start, w.end))
        self._release(w)
        return sample

    def _release(self, w: _Window) -> None:
        """Let go of a window's frames; a frame no open window samples any more is dropped."""
        self.by_index.pop(w.index, None)
        for indices in w.slots.values():
            for i in indices:
                self.refs[i] -= 1
                if self.refs[i] == 0:
                    del self.refs[i], self.frames[i]


# ---------------------------------------------------------------------------------- timeline
def detect_events(
    model_dir_or_predictor: str | os.PathLike | Predictor,
    video_path: str | os.PathLike,
    *,
    window: float = 2.0,
    stride: float = 1.0,
    batch: int = 16,
    background: str | None = None,
    progress: bool | Callable[[int, int], None] = True,
) -> dict:
    """Classify every `window`-second window, `stride` seconds apart, and merge them into events.

    Returns the timeline: `{"video", "duration", "window", "stride", "labels", "background",
    "windows": [{start, end, label, probabilities}], "events": [{label, start, end,
    confidence}], "stats"}`. An event is a run of consecutive windows of one class; it spans
    the part of the video those windows are the closest to (boundaries halfway between window
    centres), and its confidence is the class's mean probability over the run. Events of the
    `background` class are left out. Windows go through the model `batch` at a time.
    `progress`: a bar on stderr (True), none (False), or `fn(windows done, windows in all)`.
    """
    if not isinstance(batch, int) or batch < 1:
        raise DetectError(f"batch must be an int >= 1 (windows per forward pass), got {batch!r}")
    predictor = (
        model_dir_or_predictor
        if isinstance(model_dir_or_predictor, Predictor)
        else Predictor(model_dir_or_predictor)
    )
    labels = predictor.labels[predictor.task]
    if background is not None and background not in labels:
        raise DetectError(
            f"--background {background!r} is not one of the model's classes {labels}; "
            "give one of them, or leave --background out to keep every event"
        )
    fed_inputs(predictor)  # fail on a model it cannot feed before touching the file
    started = time.perf_counter()
    duration, windows = video_windows(video_path, window, stride)
    report = _progress(progress, len(windows))
    stats = StreamStats()
    probabilities: dict[int, dict[str, float]] = {}
    queue: list[tuple[int, dict]] = []

    def flush() -> None:
        predictions = predictor.predict_tensors([sample for _, sample in queue])
        for (index, _), p in zip(queue, predictions):
            probabilities[index] = p.probabilities
        queue.clear()
        report(len(probabilities))

    try:
        for index, sample in stream_windows(predictor, video_path, windows, stats=stats):
            queue.append((index, sample))
            if len(queue) >= batch:
                flush()
        if queue:
            flush()
    finally:
        report(None)
    rows = []
    for index in sorted(probabilities):
        start, end = windows[index]
        probs = probabilities[index]
        rows.append(
            {
                "start": round(start, 3),
                "end": round(end, 3),
                "label": max(probs, key=probs.get),
                "probabilities": {c: round(p, 6) for c, p in probs.items()},
            }
        )
    seconds = time.perf_counter() - started
    if stats.truncated_at is not None:
        duration = min(duration, stats.truncated_at)  # the media ends before its header says
    return {
        "video": str(video_path),
        "duration": round(duration, 3),
        "window": window,
        "stride": stride,
        "labels": labels,
        "background": background,
        "windows": rows,
        "events": merge_windows(rows, background=background),
        "stats": {
            **asdict(stats),
            "seconds": round(seconds, 3),
            "windows_per_s": round(len(rows) / max(seconds, 1e-9), 2),
        },
    }


def merge_windows(windows: Sequence[dict], *, background: str | None = None) -> list[dict]:
    """Runs of consecutive windows with one label → `{label, start, end, confidence}` events.

    Each window stands for the stretch nearer its centre than any other window's, so events
    tile the video without overlapping: a boundary lies halfway between the centres of the last
    window of one run and the first of the next. `confidence` is the mean probability of the
    label over the run; runs labelled `background` are dropped.
    """
    centres = [(w["start"] + w["end"]) / 2 for w in windows]
    events, first = [], 0
    for i in range(1, len(windows) + 1):
        if i < len(windows) and windows[i]["label"] == windows[first]["label"]:
            continue
        label = windows[first]["label"]
        if label != background:
            start = windows[0]["start"] if first == 0 else (centres[first - 1] + centres[first]) / 2
            last = i - 1
            end = windows[-1]["end"] if i == len(windows) else (centres[last] + centres[i]) / 2
            confidence = sum(w["probabilities"][label] for w in windows[first:i]) / (i - first)
            events.append(
                {
                    "label": label,
                    "start": round(start, 3),
                    "end": round(end, 3),
                    "confidence": round(confidence, 4),
                }
            )
        first = i
    return events


def plot_timeline(timeline: dict, path: str | os.PathLike) -> Path:
    """Each class's probability against time (window centres), event spans shaded; one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    windows = timeline["windows"]
    labels = timeline.get("labels") or (list(windows[0]["probabilities"]) if windows else [])
    centres = [(w["start"] + w["end"]) / 2 for w in windows]
    fig = Figure(figsize=(11, 3.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    background = timeline.get("background")
    colours = {c: f"C{i % 10}" for i, c in enumerate(c for c in labels if c != background)}
    for c in labels:
        dashed = c == background
        ax.plot(
            centres,
            [w["probabilities"][c] for w in windows],
            color="0.6" if dashed else colours[c],
            linestyle="--" if dashed else "-",
            linewidth=1.2,
            label=c,
        )
    duration = timeline.get("duration") or (windows[-1]["end"] if windows else 1.0)
    for e in timeline["events"]:
        ax.axvspan(e["start"], e["end"], color=colours.get(e["label"], "0.5"), alpha=0.18, lw=0)
        if e["end"] - e["start"] < duration / 60:
            continue  # too narrow to label legibly
        ax.text((e["start"] + e["end"]) / 2, 1.02, e["label"], ha="center", va="bottom", fontsize=7)
    ax.set_xlim(0, duration)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_title(
        f"{Path(timeline['video']).name}: {len(timeline['events'])} events "
        f"(window {timeline['window']:g} s, stride {timeline['stride']:g} s)"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# ---------------------------------------------------------------------------------- CLI
def detect_command(args: argparse.Namespace) -> int:
    """Find events in a long video: classify sliding windows, merge runs of one class.

    Slides a --window second window every --stride seconds over VIDEO (decoded once, in
    constant memory whatever its length), classifies each window from its frames and audio
    track with the model, and merges consecutive windows of one class into events with a
    start, an end and a confidence (the class's mean probability). Writes the timeline as
    JSON to --out (default: stdout) and, with --plot, a PNG of the class probabilities over
    time with the events shaded. Events of the --background class are left out.

    examples:
      mmfuse detect runs/train match.mp4 --out timeline.json
      mmfuse detect runs/train match.mp4 --window 4 --stride 2 --plot timeline.png
      mmfuse detect runs/train match.mp4 --background other --out timeline.json
    """
    from mmfuse.device import resolve_device
    from mmfuse.model.saved import CONFIG

    if not (Path(args.model_dir) / CONFIG).is_file():
        raise DetectError(
            f"{args.model_dir} is not an mmfuse model folder (no {CONFIG}); give the folder "
            "that `mmfuse train --out` wrote"
        )
    try:
        device = str(resolve_device(args.device or "cpu"))
    except RuntimeError as e:  # torch does not know the name
        raise DetectError(f"--device {args.device!r}: {e}; use auto, cpu or cuda") from None
    predictor = Predictor(args.model_dir, device=device)
    timeline = detect_events(
        predictor,
        args.video,
        window=args.window,
        stride=args.stride,
        batch=args.batch,
        background=args.background,
        progress=not args.quiet,
    )
    text = json.dumps(timeline, indent=2) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    if args.plot:
        plot_timeline(timeline, args.plot)
    events = timeline["events"]
    stopped = timeline["stats"]["truncated_at"]
    if stopped is not None:
        reason = timeline["stats"]["error"] or "the file is shorter than its header says"
        print(f"warning: the media ends at {stopped:.2f} s ({reason})", file=sys.stderr)
    print(f"{len(timeline['windows'])} windows, {len(events)} events:", file=sys.stderr)
    for e in events:
        print(
            f"  {e['start']:9.2f} – {e['end']:9.2f} s  {e['label']}  ({e['confidence']:.2f})",
            file=sys.stderr,
        )
    for kind, where in (("timeline", args.out), ("plot", args.plot)):
        if where:
            print(f"{kind}: {where}", file=sys.stderr)
    return 0


def add_detect_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `mmfuse detect` (the device flag included)."""
    p.add_argument("model_dir", help="model folder written by `mmfuse train` (its --out)")
    p.add_argument("video", help="video file to scan (any length)")
    p.add_argument(
        "--window",
        type=_seconds("--window"),
        default=2.0,
        metavar="SECONDS",
        help="length of each classified window (default: 2.0)",
    )
    p.add_argument(
        "--stride",
        type=_seconds("--stride"),
        default=1.0,
        metavar="SECONDS",
        help="time between window starts; also the precision of event bounds (default: 1.0)",
    )
    p.add_argument(
        "--batch", type=_count, default=16, metavar="N", help="windows per forward (default: 16)"
    )
    p.add_argument("--background", metavar="LABEL", help="class whose events are left out")
    p.add_argument("--out", metavar="JSON", help="write the timeline here (default: stdout)")
    p.add_argument("--plot", metavar="PNG", help="also draw the probabilities and events here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="auto (CUDA when present), cpu, cuda or cuda:N (default: cpu)",
    )


def _seconds(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{flag} takes seconds > 0, e.g. 2.0, got {text!r}")
        return value

    return parse


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


# ---------------------------------------------------------------------------------- helpers
def _check_window(window: float, stride: float) -> None:
    for flag, value in (("--window", window), ("--stride", stride)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise DetectError(f"{flag} must be seconds > 0, e.g. 2.0; got {value!r}")


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise unreadable(path, "video", e) from None


def _progress(progress: bool | Callable[[int, int], None], total: int):
    """`report(done)` after each batch, `report(None)` at the end."""
    if callable(progress):
        return lambda done: None if done is None else progress(done, total)
    if not progress:
        return lambda done: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="window", desc="detecting", leave=False)

    def report(done: int | None) -> None:
        if done is None:
            bar.close()
        else:
            bar.update(done - bar.n)

    return report


__all__ = [
    "DetectError",
    "StreamStats",
    "add_detect_arguments",
    "detect_command",
    "detect_events",
    "fed_inputs",
    "merge_windows",
    "plot_timeline",
    "stream_windows",
    "video_windows",
]
