"""`mmfuse evaluate MODEL_DIR MANIFEST`: MultimodalClassifier.evaluate, table and report files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmfuse.cli.common import (
    EXIT_OK,
    add_device_flag,
    add_model_dir,
    load_classifier,
    manifest_for,
    stem,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_dir(p)
    p.add_argument("manifest", help="labelled manifest with the model's input columns")
    p.add_argument("--out", metavar="DIR", help="report folder (default: MODEL_DIR/eval-<stem>)")
    p.add_argument(
        "--robustness",
        action="store_true",
        help="also score under noise, blur, ... at growing strengths (slower)",
    )
    add_device_flag(p, "cpu")


def run(args: argparse.Namespace) -> int:
    """Score a saved model on a labelled manifest: metrics table here, report files in --out.

    The table (accuracy, macro F1, ..., one row per class) goes to stdout; report.md,
    metrics.json and the plots (confusion matrix, per-modality ablation, with --robustness the
    accuracy under corrupted inputs) go to --out, by default MODEL_DIR/eval-<manifest stem>.

    examples:
      mmfuse evaluate runs/train data/test.csv
      mmfuse evaluate runs/train data/test.csv --out reports/test --robustness
    """
    from mmfuse.evaluate.metrics import format_table

    clf = load_classifier(args.model_dir, args.device)
    manifest = manifest_for(clf.model_config_, args.manifest, labelled=True)
    out = Path(args.out) if args.out else Path(args.model_dir) / f"eval-{stem(args.manifest)}"
    metrics = clf.evaluate(manifest, out, robustness=args.robustness)
    print(format_table(metrics))
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    return EXIT_OK
