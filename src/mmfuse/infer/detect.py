"""Find events in a long video: classify sliding windows, merge runs of one class into events.

`detect_events(model_dir, "match.mp4", window=2.0, stride=1.0)` slides a `window`-second window
every `stride` seconds over the video, feeds each window to the model as one sample and returns a
timeline: every window's class probabilities, and the events (runs of windows of one class).

The file is decoded once, front to back, in memory bounded by the window whatever the length
(`mmfuse.data.video_stream.read_windows`); this module turns each window's frames and audio into
the model's inputs and the predictions into events.

Which model inputs are fed: a video-modality input gets the window's frames; an audio-modality
input reading the same column as a video input (`InputConfig(column="video", modality="audio")`)
gets the window's audio track, as does every audio input of a model with no video input; any
other input is absent (mask False), as in `mmfuse predict` with a missing file.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from mmfuse.data.video import sliding_windows
from mmfuse.data.video_stream import StreamStats, read_windows, video_duration
from mmfuse.infer.predictor import Predictor
from mmfuse.model.config import ConfigError


class DetectError(ConfigError):
    """The detection cannot run as asked: a bad flag value, or a model it cannot feed."""


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
    duration = video_duration(video_path)
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
    video, audio = fed_inputs(predictor)
    frames = {name: predictor.specs[name].frames for name in video}
    rates = {name: predictor.specs[name].sample_rate for name in audio}
    transforms = predictor.loader.transforms
    media = read_windows(video_path, windows, frames=frames, audio_rates=rates, stats=stats)
    for index, window in media:
        sample = {}
        with torch.no_grad():
            for name, x in window.items():
                if name in frames:  # T×C×H×W uint8 → F×C×S×S
                    sample[name] = transforms[name](x, indices=torch.arange(x.shape[0]))
                else:
                    sample[name] = transforms[name](x)
        yield index, sample


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
    predictor = _checked_predictor(model_dir_or_predictor, batch, background)
    started = time.perf_counter()
    duration, windows = video_windows(video_path, window, stride)
    stats = StreamStats()
    probabilities = _classify(predictor, video_path, windows, batch, progress, stats)
    rows = _window_rows(windows, probabilities)
    seconds = time.perf_counter() - started
    if stats.truncated_at is not None:
        duration = min(duration, stats.truncated_at)  # the media ends before its header says
    return {
        "video": str(video_path),
        "duration": round(duration, 3),
        "window": window,
        "stride": stride,
        "labels": predictor.labels[predictor.task],
        "background": background,
        "windows": rows,
        "events": merge_windows(rows, background=background),
        "stats": {
            **asdict(stats),
            "seconds": round(seconds, 3),
            "windows_per_s": round(len(rows) / max(seconds, 1e-9), 2),
        },
    }


def _checked_predictor(
    model_dir_or_predictor: str | os.PathLike | Predictor, batch: int, background: str | None
) -> Predictor:
    """The predictor, once the request is known to be one it can serve (before the file opens)."""
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
    fed_inputs(predictor)
    return predictor


def _classify(
    predictor: Predictor,
    video_path: str | os.PathLike,
    windows: Sequence[tuple[float, float]],
    batch: int,
    progress: bool | Callable[[int, int], None],
    stats: StreamStats,
) -> dict[int, dict[str, float]]:
    """Window index → class probabilities, the windows going through the model `batch` at a time."""
    report = _progress(progress, len(windows))
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
    return probabilities


def _window_rows(
    windows: Sequence[tuple[float, float]], probabilities: dict[int, dict[str, float]]
) -> list[dict]:
    """The timeline's `windows`: each classified window's span, label and probabilities."""
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
    return rows


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


# ---------------------------------------------------------------------------------- helpers
def _check_window(window: float, stride: float) -> None:
    for flag, value in (("--window", window), ("--stride", stride)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise DetectError(f"{flag} must be seconds > 0, e.g. 2.0; got {value!r}")


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
    "detect_events",
    "fed_inputs",
    "merge_windows",
    "plot_timeline",
    "stream_windows",
    "video_windows",
]
