"""The `mmfuse` command line: thin typed commands over the Python API.

    mmfuse validate MANIFEST                     check every file a manifest references
    mmfuse train MANIFEST --val MANIFEST         MultimodalClassifier.fit, then .save(--out)
    mmfuse evaluate MODEL_DIR MANIFEST           MultimodalClassifier.evaluate
    mmfuse predict MODEL_DIR MANIFEST            MultimodalClassifier.predict_proba
    mmfuse embed MODEL_DIR MANIFEST --out F      MultimodalClassifier.embed (streamed)
    mmfuse detect MODEL_DIR VIDEO                mmfuse.infer.detect.detect_events
    mmfuse serve MODEL_DIR                       mmfuse.serve.run.serve (HTTP API + web page)
    mmfuse export MODEL_DIR --out model.onnx     mmfuse.ship.onnx.export_onnx
    mmfuse compress MODEL_DIR --prune 0.5        mmfuse.ship.prune.prune_model
    mmfuse anomaly fit MANIFEST --out DIR        AnomalyDetector.fit, then .save
    mmfuse anomaly score DIR MANIFEST --out F    AnomalyDetector.score_table
    mmfuse anomaly evaluate DIR MANIFEST         AnomalyDetector.evaluate
    mmfuse datasets make avdigits DIR            mmfuse.data.avdigits.make_avdigits
    mmfuse datasets make surveillance DIR        mmfuse.data.surveillance.make_surveillance
    mmfuse demo                                  mmfuse.demo.run_demo

Each command is a module of this package with `add_arguments(parser)` and `run(args)`, named in
`COMMANDS`; `run`'s docstring is the command's `--help`. Argument types that several commands
share (`--device`, the model folder, COLUMN=VALUE pairs) are in `common.py`.

Exit codes: 0 ok, 1 data problems (files that cannot be read, a damaged model folder), 2 usage
errors (bad flags or config values, unknown encoder or fusion names, a manifest or model folder
that is not one), 130 interrupted. Errors print as one sentence; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from dataclasses import dataclass

from mmfuse.cli.common import (
    EXIT_DATA,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_budget_flags,
    apply_budget_flags,
)
from mmfuse.errors import EncoderError, ManifestError, MmfuseError
from mmfuse.model.config import ConfigError

__all__ = [
    "COMMANDS",
    "EXIT_DATA",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Group",
    "UsageError",
    "build_parser",
    "entry_point",
    "main",
]


@dataclass(frozen=True)
class Group:
    """A command made of subcommands (`mmfuse datasets make ...`); alone it prints its help."""

    summary: str
    commands: dict[str, str | Group]
    examples: str = ""


_DATASETS_EXAMPLES = """examples:
  mmfuse datasets make avdigits data/avdigits
  mmfuse datasets make avdigits --help
  mmfuse datasets make surveillance data/surv"""

# Command → the module holding its `add_arguments` and `run`, imported when the parser is built.
# Those modules import torch, FastAPI, onnx and the like inside `run`, so `mmfuse --help` loads
# none of them; only the chosen command's `add_arguments` runs (`build_parser`).
# Commands that decode media files: they take the --max-* decode budgets.
READS_MEDIA = (
    "validate",
    "train",
    "evaluate",
    "predict",
    "embed",
    "detect",
    "serve",
    "fit",
    "score",
)
_ANOMALY_EXAMPLES = """examples:
  mmfuse anomaly fit data/surv/train.csv --val data/surv/val.csv --out runs/surv
  mmfuse anomaly evaluate runs/surv data/surv/test.csv"""

COMMANDS: dict[str, str | Group] = {
    "validate": "mmfuse.cli.validate",
    "train": "mmfuse.cli.train",
    "evaluate": "mmfuse.cli.evaluate",
    "predict": "mmfuse.cli.predict",
    "embed": "mmfuse.cli.embed",
    "detect": "mmfuse.cli.detect",
    "serve": "mmfuse.cli.serve",
    "export": "mmfuse.cli.export",
    "compress": "mmfuse.cli.compress",
    "datasets": Group(
        "Make the example datasets.",
        {
            "make": Group(
                "Generate an example dataset into a folder.",
                {"avdigits": "mmfuse.cli.datasets", "surveillance": "mmfuse.cli.surveillance"},
                _DATASETS_EXAMPLES,
            )
        },
        _DATASETS_EXAMPLES,
    ),
    "demo": "mmfuse.cli.demo",
    "anomaly": Group(
        "One-class anomaly detection: fit on normal samples, score, evaluate.",
        {
            "fit": "mmfuse.cli.anomaly_fit",
            "score": "mmfuse.cli.anomaly_score",
            "evaluate": "mmfuse.cli.anomaly_evaluate",
        },
        _ANOMALY_EXAMPLES,
    ),
}

# Mistakes in what was asked for (exit 2), as opposed to data that cannot be read (exit 1).
USAGE_ERRORS = (ManifestError, UsageError, ConfigError, EncoderError)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit 2), pointing at --help."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the `argv` it will parse, only the command `argv` names gets its
    options (the others, their names and summaries), so that `mmfuse --help` and `mmfuse
    predict ...` do not import what `mmfuse train` lists: every encoder, hence torch."""
    parser = _Parser(
        prog="mmfuse",
        description="Multimodal deep learning on image, audio, video and text.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    chosen = None if argv is None else _chosen(argv, COMMANDS)
    _add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"), COMMANDS, chosen)
    return parser


def _chosen(argv: list[str], table: dict[str, str | Group]) -> list[str]:
    """The command names `argv` gives, outermost first (`["datasets", "make", "avdigits"]`)."""
    path = []
    for token in argv:
        if token.startswith("-"):  # the top level's options are flags: none takes a value
            continue
        entry = table.get(token)
        if entry is None:
            break
        path.append(token)
        if not isinstance(entry, Group):
            break
        table = entry.commands
    return path


def _add_commands(sub, table: dict[str, str | Group], chosen: list[str] | None = None) -> None:
    """Commands of `table` on `sub`; with `chosen` (a path from `_chosen`), options only for
    the command at its end."""
    for name, entry in table.items():
        picked = chosen is None or chosen[:1] == [name]
        inner = None if chosen is None else chosen[1:] if picked else []
        if isinstance(entry, Group):
            _add_commands(_add_group(sub, name, entry), entry.commands, inner)
            continue
        module = importlib.import_module(entry)
        p = _add_command(sub, name, module.run)
        if picked:
            module.add_arguments(p)
            if name in READS_MEDIA:
                add_budget_flags(p)


def _add_command(sub, name: str, run) -> argparse.ArgumentParser:
    doc = inspect.cleandoc(run.__doc__ or "")
    summary = doc.splitlines()[0] if doc else name
    p = sub.add_parser(
        name,
        help=summary,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Also accepted after the command; SUPPRESS keeps `mmfuse --debug CMD` working.
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    p.set_defaults(func=run, prog=p.prog)
    return p


def _add_group(sub, name: str, group: Group):
    p = sub.add_parser(
        name,
        help=group.summary,
        description=group.summary,
        epilog=group.examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def show_help(args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return EXIT_USAGE

    p.set_defaults(func=show_help, prog=p.prog)
    return p.add_subparsers(metavar="COMMAND")


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (0 ok, 1 data, 2 usage, 130 interrupted) is returned."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        apply_budget_flags(args)
        return args.func(args)
    except USAGE_ERRORS as e:
        if args.debug:
            raise
        print(f"{args.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except MmfuseError as e:
        if args.debug:
            raise
        print(f"{args.prog}: error: {e}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry_point() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `mmfuse predict ... | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    sys.exit(code)
