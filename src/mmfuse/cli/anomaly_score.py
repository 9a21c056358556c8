"""`mmfuse anomaly score DIR MANIFEST --out scores.csv`: AnomalyDetector.score_table."""

from __future__ import annotations

import argparse
import sys

from mmfuse.cli._anomaly import add_detector_dir, load_detector
from mmfuse.cli.common import EXIT_OK, add_device_flag


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_detector_dir(p)
    p.add_argument("manifest", help="manifest with the detector's input columns")
    p.add_argument("--out", required=True, metavar="CSV", help="the scores table to write")
    add_device_flag(p, "cpu")


def run(args: argparse.Namespace) -> int:
    """Score every row of a manifest: higher is more anomalous.

    The CSV holds the manifest's columns, then `score` (the fused score), `anomaly` (true
    above the detector's threshold), one `score_<input>` per input (its score standardised on
    held-out normal data; empty where the input is absent) and `error` (what could not be
    read). A row none of whose inputs could be read has an empty score.

    examples:
      mmfuse anomaly score runs/surv data/surv/test.csv --out scores.csv
    """
    from mmfuse.anomaly.detector import as_manifest

    detector = load_detector(args.detector_dir, args.device)
    manifest = as_manifest(args.manifest, modalities=detector.column_roles())
    table = detector.score_table(manifest)
    frame = manifest.frame.copy()
    for column in table.columns:
        frame[column] = table[column].to_numpy()
    frame.to_csv(args.out, index=False)
    flagged = int(table["anomaly"].sum())
    print(
        f"{flagged} of {len(table)} rows above the threshold; scores: {args.out}", file=sys.stderr
    )
    return EXIT_OK
