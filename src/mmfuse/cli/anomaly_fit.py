"""`mmfuse anomaly fit MANIFEST --out DIR`: AnomalyDetector.fit on normal samples, then save."""

from __future__ import annotations

import argparse
import json
import sys

from mmfuse.cli.common import (
    EXIT_OK,
    UsageError,
    add_device_flag,
    add_modality_flag,
    parse_pairs,
    resolve_device,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mmfuse.anomaly.scorers import SCORERS
    from mmfuse.train.presets import PRESETS

    p.add_argument(
        "manifest",
        help="manifest of normal samples (a label column, if any, is used "
        "to keep the rows labelled normal)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="detector folder to write")
    p.add_argument(
        "--val",
        metavar="MANIFEST",
        help="held-out normal samples for the threshold (default: 30%% of MANIFEST held out)",
    )
    p.add_argument(
        "--false-alarm",
        type=float,
        default=0.01,
        metavar="RATE",
        help="target share of normal samples flagged (default: 0.01)",
    )
    p.add_argument(
        "--scorer",
        choices=SCORERS,
        default="gaussian",
        help="knn: distance to the nearest normal samples; gaussian: Mahalanobis "
        "distance (default: gaussian, measured in docs/anomaly.md)",
    )
    p.add_argument("--k", type=int, default=5, metavar="N", help="neighbours of knn (default: 5)")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        help="which frozen encoders (default: the pretrained ones where installed)",
    )
    p.add_argument(
        "--encoders",
        metavar="JSON",
        help="encoder per column, input or modality, "
        'as in MultimodalClassifier, e.g. \'{"audio": "sound-cnn-tiny"}\'',
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="holdout split seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_modality_flag(p)
    add_device_flag(p, "auto", "feature extraction")


def run(args: argparse.Namespace) -> int:
    """Fit an anomaly detector on normal samples only and save it.

    Each input (a video column: its frames and its audio track) is read by a frozen encoder,
    its features cached like the classifier's; a one-class scorer per input is fitted on the
    normal rows, the inputs' scores are standardised on held-out normal rows (--val, or a
    split of MANIFEST) and combined, and the threshold is set there for --false-alarm.

    examples:
      mmfuse datasets make surveillance data/surv
      mmfuse anomaly fit data/surv/train.csv --val data/surv/val.csv --out runs/surv
      mmfuse anomaly fit data/surv/train.csv --out runs/surv --scorer knn --false-alarm 0.05
    """
    from mmfuse.anomaly import AnomalyDetector

    detector = AnomalyDetector(
        scorer=args.scorer,
        k=args.k,
        false_alarm=args.false_alarm,
        preset=args.preset,
        encoders=_encoders(args.encoders),
        seed=args.seed,
        device=resolve_device(args.device, "auto"),
        verbose=not args.quiet,
    )
    modalities = parse_pairs(args.modality, "--modality") or None
    detector.fit(args.manifest, val=args.val, modalities=modalities)
    detector.save(args.out)
    for note in detector.notes_:
        print(f"note: {note}", file=sys.stderr)
    inputs = ", ".join(f"{n} ({s.encoder})" for n, s in detector.inputs_.items())
    print(f"inputs: {inputs}")
    print(
        f"threshold {detector.threshold_:.3f} for a false-alarm rate of {args.false_alarm:g} "
        f"({detector.n_reference_} reference, {detector.n_held_out_} held-out normal samples)"
    )
    print(f"detector: {args.out}")
    return EXIT_OK


def _encoders(text: str | None):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f'--encoders is not JSON ({e}); e.g. \'{{"audio": "mel-cnn"}}\'') from None
    if not isinstance(value, dict):
        raise UsageError(f"--encoders must be a JSON object, got {text!r}")
    return value
