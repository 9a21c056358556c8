"""`mmfuse validate MANIFEST`: every file a manifest references opened, each problem listed."""

from __future__ import annotations

import argparse
import json
import sys

from mmfuse.cli.common import EXIT_DATA, EXIT_OK, add_modality_flag, parse_pairs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="CSV, TSV, JSONL or Parquet file, or a class-per-folder root")
    p.add_argument("--label", help="label column (default: a column named label/class/target)")
    add_modality_flag(p)
    p.add_argument("--json", action="store_true", help="print the problems as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument("--clip-seconds", type=float, help="warn about videos shorter than this")
    p.add_argument(
        "--workers", type=int, metavar="N", help="files opened in parallel (default: 2 per core)"
    )


def run(args: argparse.Namespace) -> int:
    """Open every file a manifest references and list each problem: row, column, path, reason.

    Errors (the sample cannot be used) and warnings (usable but suspicious) are told apart;
    warnings alone exit 0 unless --strict.

    examples:
      mmfuse validate data/train.csv
      mmfuse validate data/ --label class --json > problems.json
      mmfuse validate train.parquet --strict --clip-seconds 2
    """
    from mmfuse.data import Thresholds, read_manifest, summarize, validate

    modalities = parse_pairs(args.modality, "--modality")
    manifest = read_manifest(args.manifest, label=args.label, modalities=modalities)
    thresholds = Thresholds(clip_seconds=args.clip_seconds)
    problems = validate(manifest, thresholds=thresholds, workers=args.workers)
    counts = summarize(problems)
    if args.json:
        print(json.dumps({"problems": [p.to_dict() for p in problems], **counts}, indent=2))
    else:
        print(manifest.summary(), file=sys.stderr)
        for p in problems:
            print(p)
        print(
            f"{len(manifest)} rows checked: {counts['errors']} errors in "
            f"{counts['rows_with_errors']} rows, {counts['warnings']} warnings",
            file=sys.stderr,
        )
    if counts["errors"] or (args.strict and counts["warnings"]):
        return EXIT_DATA
    return EXIT_OK
