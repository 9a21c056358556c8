"""`mmfuse detect`: events in a long video, over `mmfuse.infer.detect.detect_events`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from mmfuse.cli.common import add_device_flag, add_model_dir, model_folder, resolve_device


def run(args: argparse.Namespace) -> int:
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
    from mmfuse.infer.detect import detect_events, plot_timeline
    from mmfuse.infer.predictor import Predictor

    folder = model_folder(args.model_dir)
    predictor = Predictor(folder, device=resolve_device(args.device))
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
    _summary(timeline, args)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `mmfuse detect` (the device flag included)."""
    add_model_dir(p)
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


__all__ = ["add_arguments", "run"]
