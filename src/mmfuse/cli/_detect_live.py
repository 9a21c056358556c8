"""`mmfuse detect` on a live source or with an anomaly detector: event lines as windows complete."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmfuse.cli.common import UsageError, model_folder, resolve_device
from mmfuse.errors import MmfuseError


def watch_source(args: argparse.Namespace, kind: str) -> int:
    from mmfuse.data.live_source import SourceError, open_source
    from mmfuse.infer.live import watch
    from mmfuse.infer.webhook import Webhook, WebhookError

    scorer = _scorer(args, kind)
    try:
        webhook = Webhook(args.webhook) if args.webhook else None
        source = open_source(
            args.source, idle=args.idle, follow=args.follow, open_timeout=args.open_timeout
        )
    except (SourceError, WebhookError) as e:
        raise UsageError(str(e)) from None
    out = _output(args.out)

    def emit(line: dict) -> None:
        out.write(json.dumps(line) + "\n")
        out.flush()  # a line is an alarm: whoever tails the file sees it now
        if webhook is not None:
            webhook.post(line)

    try:
        summary = watch(
            scorer,
            source,
            window=args.window,
            stride=args.stride,
            emit=emit,
            max_lag=args.max_lag,
        )
    finally:
        if out is not sys.stdout:
            out.close()
        if webhook is not None:
            webhook.close()
    if not args.quiet:
        print(
            f"{args.source}: {summary.scored} windows scored, {summary.skipped} skipped "
            f"(furthest behind {summary.worst_lag_s:.1f} s), {summary.events} events; "
            f"stopped: {summary.ended}",
            file=sys.stderr,
        )
    if summary.bad_audio_chunks:
        print(
            f"{args.source}: {summary.bad_audio_chunks} audio chunk(s) held NaN, infinity or "
            "peaks far past full scale and were scored as silence: check the source's encoder",
            file=sys.stderr,
        )
    if summary.scored == 0 and summary.skipped == 0:
        raise MmfuseError(
            f"{args.source}: no window of {args.window:g} s could be read ({summary.ended}); "
            "check that it holds video or sound, or give a shorter --window"
        )
    return 0


def _scorer(args: argparse.Namespace, kind: str):
    if kind == "anomaly":
        from mmfuse.anomaly.windows import AnomalyWindows
        from mmfuse.cli._anomaly import load_detector

        if args.background:
            raise UsageError(
                "--background names a classifier's class; an anomaly detector has none"
            )
        return AnomalyWindows(load_detector(args.model_dir, args.device), args.model_dir)
    from mmfuse.infer.live import ClassifierWindows
    from mmfuse.infer.predictor import Predictor

    predictor = Predictor(model_folder(args.model_dir), device=resolve_device(args.device))
    labels = predictor.labels[predictor.task]
    if args.background is not None and args.background not in labels:
        raise UsageError(
            f"--background {args.background!r} is not one of the model's classes {labels}"
        )
    return ClassifierWindows(predictor, args.background)


def _output(path: str | None):
    if not path:
        return sys.stdout
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w")
    except OSError as e:
        raise UsageError(f"--out {path}: cannot be written ({e.strerror or e})") from None
