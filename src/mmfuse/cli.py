"""The `mmfuse` command line: thin typed commands over the Python API.

Exit codes: 0 ok, 1 data problems, 2 usage errors (bad flags, a manifest that cannot be read).
Errors print as one sentence; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys

from mmfuse.errors import ManifestError, MmfuseError

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2


def validate_command(args: argparse.Namespace) -> int:
    """Open every file a manifest references and list each problem: row, column, path, reason.

    Errors (the sample cannot be used) and warnings (usable but suspicious) are told apart;
    warnings alone exit 0 unless --strict.

    examples:
      mmfuse validate data/train.csv
      mmfuse validate data/ --label class --json > problems.json
      mmfuse validate train.parquet --strict --clip-seconds 2
    """
    from mmfuse.data import Thresholds, read_manifest, summarize, validate

    modalities = _parse_pairs(args.modality, "--modality")
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


def _add_validate(sub) -> None:
    p = _command(sub, "validate", validate_command)
    p.add_argument("manifest", help="CSV, TSV, JSONL or Parquet file, or a class-per-folder root")
    p.add_argument("--label", help="label column (default: a column named label/class/target)")
    p.add_argument(
        "--modality",
        action="append",
        default=[],
        metavar="COLUMN=ROLE",
        help="declare a column's role: image, audio, video, text, label or ignore (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the problems as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument("--clip-seconds", type=float, help="warn about videos shorter than this")
    p.add_argument("--workers", type=int, help="files opened in parallel (default: 2 per core)")


def _parse_pairs(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag} expects COLUMN=VALUE, got {pair!r}")
        out[key] = value
    return out


class UsageError(MmfuseError):
    """A command-line mistake (exit 2)."""


def _command(sub, name: str, fn) -> argparse.ArgumentParser:
    doc = inspect.cleandoc(fn.__doc__ or "")
    summary = doc.splitlines()[0] if doc else name
    p = sub.add_parser(
        name,
        help=summary,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=fn)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmfuse",
        description="Multimodal deep learning on image, audio, video and text.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_validate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors and 0 for --help
        return int(e.code or 0)
    if args.version:
        from mmfuse import __version__

        print(__version__)
        return EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (ManifestError, UsageError) as e:
        if args.debug:
            raise
        print(f"mmfuse {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except MmfuseError as e:
        if args.debug:
            raise
        print(f"mmfuse {args.command}: error: {e}", file=sys.stderr)
        return EXIT_DATA


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
