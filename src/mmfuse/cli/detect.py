"""`mmfuse detect`: events in a long video (`mmfuse.infer.detect.detect_events`), or in a
live source with a classifier or an anomaly detector (`mmfuse.infer.live.watch`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from mmfuse.cli.common import UsageError, add_device_flag, model_folder, resolve_device


def run(args: argparse.Namespace) -> int:
    """Find events in a video, a growing file or a live stream, with a classifier or an
    anomaly detector.

    MODEL_DIR is a classifier folder (`mmfuse train --out`) or an anomaly detector folder
    (`mmfuse anomaly fit --out`). SOURCE is a file, a file still being written (--idle
    SECONDS: finished once it stops growing that long; --follow: never), a stream URL
    (rtsp://, udp://, http://, srt://...) or a device (/dev/video0, alsa:default).

    A classifier on a file slides a --window second window every --stride seconds (decoded
    once, in constant memory), classifies each window, merges runs of one class into events
    and writes the timeline as JSON to --out (default: stdout); --plot draws it.

    Otherwise (an anomaly detector, or any live source) windows are scored as they complete
    and events are written as JSON lines, flushed one by one, to --out (default: stdout): a
    "start" line as soon as an event's first window is scored and an "end" line with its span,
    peak score and the inputs that fired. --webhook also POSTs each line. When scoring falls
    more than --max-lag seconds behind a live source, windows are skipped (one stderr line
    per burst says how far behind), so memory stays flat however long it runs.

    examples:
      mmfuse detect runs/train match.mp4 --out timeline.json
      mmfuse detect runs/train match.mp4 --window 4 --stride 2 --plot timeline.png
      mmfuse detect runs/surv recording.mp4 --out events.jsonl
      mmfuse detect runs/surv rtsp://camera.local/stream --webhook http://alerts.local/hook
      mmfuse detect runs/surv udp://0.0.0.0:5000 --window 2 --stride 1 --idle 30
      mmfuse detect runs/surv growing.ts --follow --out events.jsonl
      mmfuse detect runs/surv /dev/video0 --follow
    """
    from mmfuse.data.live_source import source_kind

    kind = _folder_kind(args.model_dir)
    live = source_kind(args.source) != "file" or args.idle is not None or args.follow
    if kind == "classifier" and not live:
        return _timeline(args)
    if args.plot:
        raise UsageError("--plot draws a classifier's timeline of a file; leave it out here")
    from mmfuse.cli._detect_live import watch_source

    return watch_source(args, kind)


def _timeline(args: argparse.Namespace) -> int:
    from mmfuse.infer.detect import detect_events, plot_timeline
    from mmfuse.infer.predictor import Predictor

    folder = model_folder(args.model_dir)
    predictor = Predictor(folder, device=resolve_device(args.device))
    timeline = detect_events(
        predictor,
        args.source,
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
    _summary(timeline, args)
    return 0


def _folder_kind(path: str) -> str:
    """ "classifier" or "anomaly", by the files the folder holds."""
    from mmfuse.anomaly.folder import CONFIG as DETECTOR
    from mmfuse.model.saved import CONFIG as MODEL

    folder = Path(path)
    if (folder / DETECTOR).is_file():
        return "anomaly"
    if (folder / MODEL).is_file():
        return "classifier"
    raise UsageError(
        f"{path} is neither a model folder (no {MODEL}) nor an anomaly detector folder (no "
        f"{DETECTOR}); give the folder that `mmfuse train --out` or `mmfuse anomaly fit --out` "
        "wrote"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `mmfuse detect` (the device flag included)."""
    p.add_argument(
        "model_dir", help="classifier folder (`mmfuse train`) or detector (`mmfuse anomaly fit`)"
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="video file, growing file, stream URL (rtsp://, udp://, http://) or device",
    )
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
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write the timeline (classifier on a file) or the event lines here (default: stdout)",
    )
    p.add_argument(
        "--idle",
        type=_seconds("--idle", zero=True),
        metavar="SECONDS",
        help="a growing file or stream has ended after this long without new data "
        "(default: a file is read as it is; streams 10)",
    )
    p.add_argument("--follow", action="store_true", help="never end on silence: wait for more data")
    p.add_argument(
        "--max-lag",
        type=_seconds("--max-lag"),
        metavar="SECONDS",
        help="skip windows that come up this far behind a live source (default: the stride, "
        "at least 1)",
    )
    p.add_argument("--webhook", metavar="URL", help="also POST every event line here (JSON)")
    p.add_argument(
        "--open-timeout",
        type=_seconds("--open-timeout"),
        metavar="SECONDS",
        help="a stream or device that sends nothing this long is unreachable (default: 10)",
    )
    p.add_argument("--plot", metavar="PNG", help="also draw the probabilities and events here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_flag(p, "cpu")


def _summary(timeline: dict, args: argparse.Namespace) -> None:
    """The events, and where the outputs went, on stderr (stdout may hold the timeline)."""
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


def _seconds(flag: str, zero: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > 0 or (zero and value == 0))):
            bound = ">= 0" if zero else "> 0"
            raise argparse.ArgumentTypeError(
                f"{flag} takes seconds {bound}, e.g. 2.0, got {text!r}"
            )
        return value

    return parse


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


__all__ = ["add_arguments", "run"]
