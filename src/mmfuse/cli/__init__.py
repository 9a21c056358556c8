"""The `mmfuse` command line: thin typed commands over the Python API.

    mmfuse validate MANIFEST                     check every file a manifest references
    mmfuse train MANIFEST --val MANIFEST         MultimodalClassifier.fit, then .save(--out)
    mmfuse evaluate MODEL_DIR MANIFEST           MultimodalClassifier.evaluate
    mmfuse predict MODEL_DIR MANIFEST            MultimodalClassifier.predict_proba
    mmfuse detect MODEL_DIR VIDEO                mmfuse.infer.detect.detect_events
    mmfuse serve MODEL_DIR                       mmfuse.serve.app.serve (HTTP API + web page)
    mmfuse export MODEL_DIR --out model.onnx     mmfuse.ship.export.export_onnx
    mmfuse compress MODEL_DIR --prune 0.5        mmfuse.ship.compress.prune_model
    mmfuse datasets make avdigits DIR            mmfuse.data.avdigits.make_avdigits
    mmfuse demo                                  mmfuse.demo.run_demo

Each command's `--help` is its function's docstring. Exit codes: 0 ok, 1 data problems (files
that cannot be read, a damaged model folder), 2 usage errors (bad flags or config values,
unknown encoder or fusion names, a manifest or model folder that is not one). Errors print as
one sentence; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path

from mmfuse.cli.common import (
    EXIT_DATA,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_device_flag,
    add_modality_flag,
    load_classifier,
    manifest_for,
    parse_pairs,
    resolve_device,
    stem,
)
from mmfuse.encoders.base import EncoderError
from mmfuse.errors import ManifestError, MmfuseError
from mmfuse.model.config import ConfigError


# ---------------------------------------------------------------------------------- validate
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


def _add_validate(sub) -> None:
    p = _command(sub, "validate", validate_command)
    p.add_argument("manifest", help="CSV, TSV, JSONL or Parquet file, or a class-per-folder root")
    p.add_argument("--label", help="label column (default: a column named label/class/target)")
    add_modality_flag(p)
    p.add_argument("--json", action="store_true", help="print the problems as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument("--clip-seconds", type=float, help="warn about videos shorter than this")
    p.add_argument(
        "--workers", type=int, metavar="N", help="files opened in parallel (default: 2 per core)"
    )


# ---------------------------------------------------------------------------------- train
def train_command(args: argparse.Namespace) -> int:
    """Train a classifier on a manifest, evaluate it on --val and save the model folder.

    Prints a summary of the data, one line per epoch and, with --val, the metrics table of the
    best epoch. --out (default runs/<manifest stem>) is the run folder and the model folder:
    the checkpoints, then config.json, labels.json, model.safetensors and, with --val,
    metrics.json, report.md and the plots. After an interruption, run the same command again
    with --resume.

    --config FILE is one JSON object of MultimodalClassifier parameters: fusion, encoders,
    epochs, batch_size, lr, seed, device, workers, fusion_dim, fusion_options,
    modality_dropout, train_options. Any other TrainConfig field (precision, patience,
    label_smoothing, ...) may sit at the top level or in train_options. Flags override it:

      {"epochs": 20, "fusion": "gated", "fusion_dim": 128,
       "encoders": {"image": "resnet18", "text": {"encoder": "hf", "mode": "freeze",
                                                  "options": {"path": "models/minilm"}}},
       "train_options": {"precision": "bf16", "patience": 5}}

    examples:
      mmfuse train data/train.csv --val data/val.csv
      mmfuse train data/train.csv --val data/val.csv --fusion gated --epochs 20
      mmfuse train data/train.csv --encoder image=resnet18 --freeze image
      mmfuse train data/train.csv --encoder text=hf:models/minilm --freeze text
      mmfuse train data/train.csv --encoder-options image='{"width": 16, "stages": 3}'
      mmfuse train data/train.csv --config train.json --lr 3e-4 --out runs/lr3e-4
      mmfuse train data/train.csv --out runs/lr3e-4 --resume
    """
    from mmfuse.classifier import MultimodalClassifier
    from mmfuse.data import read_manifest
    from mmfuse.evaluate.metrics import format_table
    from mmfuse.train.checkpoint import latest_checkpoint

    params = _train_params(args)
    out = Path(args.out) if args.out else Path("runs") / stem(args.manifest)
    if not args.resume and latest_checkpoint(out, verify=False) is not None:
        raise UsageError(
            f"--out {out} already holds a training run; add --resume to continue it, or give "
            "another --out"
        )
    modalities = parse_pairs(args.modality, "--modality") or None
    label = args.label[0] if len(args.label) == 1 else (args.label or None)
    train = read_manifest(args.manifest, label=label, modalities=modalities)
    if not train.labels:
        raise UsageError(
            f"{train.source} has no column named label, class, target, ...; name the label "
            "column with --label COLUMN"
        )
    val = None
    if args.val:
        val = read_manifest(args.val, label=train.labels, modalities=modalities)
    print(train.summary())
    if val is not None:
        print(val.summary())
    print()

    clf = MultimodalClassifier(**params, out_dir=out, verbose=True)
    try:
        clf.fit(train, val=val, resume=args.resume)
    except KeyboardInterrupt:
        print(f"\ninterrupted; to continue, run the same command with --resume (--out {out})")
        raise
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK  # under torchrun, rank 0 saves the model and prints the report
    model_dir = clf.save(out)

    if clf.evaluation_ is not None:
        print()
        print(format_table(clf.evaluation_["metrics"]))
        print(f"\nreport: {model_dir / 'report.md'}")
    else:
        print(f"\nno --val given, so no evaluation; run: mmfuse evaluate {model_dir} MANIFEST")
    print(f"model folder: {model_dir}")
    return EXIT_OK


def _add_train(sub) -> None:
    from mmfuse import encoders, fusion

    p = _command(sub, "train", train_command)
    p.add_argument("manifest", help="training manifest (CSV, TSV, JSONL, Parquet or a folder)")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="COLUMN",
        help="label column; repeat for several tasks (default: a column named label/class/...)",
    )
    p.add_argument(
        "--val",
        metavar="MANIFEST",
        help="validation manifest: picks the best epoch, makes the report",
    )
    add_modality_flag(p)
    p.add_argument("--config", metavar="FILE", help="JSON of classifier parameters (see above)")
    p.add_argument(
        "--fusion",
        metavar="NAME",
        help=f"fusion method: {', '.join(fusion.available())} (default: attention)",
    )
    names = "; ".join(f"{m}: {', '.join(n)}" for m, n in encoders.available().items())
    p.add_argument(
        "--encoder",
        action="append",
        default=[],
        metavar="COLUMN=NAME",
        help=f"encoder of a column or of every column of a modality; NAME is one of {names} "
        "or hf:<folder-or-hub-id> (repeatable)",
    )
    p.add_argument(
        "--encoder-options",
        action="append",
        default=[],
        metavar="COLUMN=JSON",
        help="the encoder's options as a JSON object, e.g. image='{\"width\": 16}'; options not "
        "given take the encoder's own defaults (repeatable)",
    )
    p.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="COLUMN",
        help="keep this column's (or modality's) encoder fixed; its features are cached "
        "(repeatable)",
    )
    p.add_argument(
        "--epochs", type=int, metavar="N", help="passes over the training data (default: 10)"
    )
    p.add_argument("--batch-size", type=int, metavar="N", help="samples per step (default: 32)")
    p.add_argument("--lr", type=float, metavar="X", help="learning rate (default: 1e-3)")
    p.add_argument(
        "--seed", type=int, metavar="N", help="seed of weights, shuffling and augmentation"
    )
    add_device_flag(p, "auto")
    p.add_argument(
        "--workers", type=int, metavar="N", help="data-loading processes (default: 0, in-process)"
    )
    p.add_argument("--out", metavar="DIR", help="run and model folder (default: runs/<stem>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")


def _train_params(args: argparse.Namespace) -> dict:
    """MultimodalClassifier parameters: the --config file, then the flags over it."""
    params = _read_config(args.config) if args.config else {}
    flags = {
        "fusion": args.fusion,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "workers": args.workers,
    }
    params.update({k: v for k, v in flags.items() if v is not None})

    encoders = {}
    for key, choice in (params.get("encoders") or {}).items():
        if isinstance(choice, str):
            choice = {"encoder": choice}
        if not isinstance(choice, dict):
            raise UsageError(
                f"--config: encoders[{key!r}] must be an encoder name or an object of InputConfig "
                f"fields, got {choice!r}"
            )
        encoders[key] = dict(choice)
    for key, name in parse_pairs(args.encoder, "--encoder").items():
        entry = encoders.setdefault(key, {})
        if entry.get("encoder") != name:
            entry.pop("options", None)  # options of another encoder would not fit this one
        entry["encoder"] = name
    for key, text in parse_pairs(args.encoder_options, "--encoder-options").items():
        try:
            options = json.loads(text)
        except json.JSONDecodeError:
            options = None
        if not isinstance(options, dict):
            raise UsageError(
                f"--encoder-options {key}= expects a JSON object such as "
                f"'{{\"width\": 16}}', got {text!r}"
            )
        entry = encoders.setdefault(key, {})
        entry["options"] = {**entry.get("options", {}), **options}
    for key in args.freeze:
        encoders.setdefault(key, {})["mode"] = "freeze"
    if encoders:
        params["encoders"] = encoders

    _check_fusion(params.get("fusion", "attention"), params.get("fusion_options") or {})
    resolve_device(params.get("device"), default="auto")
    return params


def _read_config(path: str) -> dict:
    """A --config file: MultimodalClassifier parameters, TrainConfig fields allowed flat."""
    from mmfuse.classifier import MultimodalClassifier
    from mmfuse.train.config import TrainConfig

    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"--config {path} cannot be read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--config {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must hold a JSON object, got {type(data).__name__}")

    own = set(MultimodalClassifier().get_params()) - {"out_dir", "verbose"}
    train_fields = set(TrainConfig.__dataclass_fields__) - {"progress"}
    options = data.pop("train_options", None) or {}
    if not isinstance(options, dict):
        raise UsageError(f"--config {path}: train_options must be an object of TrainConfig fields")
    params, options = {}, dict(options)
    for key, value in data.items():
        if key in own:
            params[key] = value
        elif key in train_fields:
            options[key] = value
        else:
            raise UsageError(
                f"--config {path}: unknown key {key!r}; valid keys: {', '.join(sorted(own))} "
                "and any TrainConfig field"
            )
    for key in list(options):
        if key in own:  # epochs, lr, ... are classifier parameters
            params.setdefault(key, options.pop(key))
        elif key not in train_fields:
            raise UsageError(
                f"--config {path}: train_options has the unknown field {key!r}; valid fields: "
                f"{', '.join(sorted(train_fields))}"
            )
    if options:
        params["train_options"] = options
    return params


def _check_fusion(name: str, options: dict) -> None:
    from mmfuse import fusion

    if name not in fusion.available():
        raise UsageError(
            f"unknown fusion method {name!r}; valid: {', '.join(fusion.available())} (--fusion)"
        )
    accepted = inspect.signature(fusion.FUSIONS.get(name).__init__).parameters
    valid = [p for p in accepted if p not in ("self", "input_dims", "output_dim")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UsageError(
            f"fusion {name!r} has no option(s) {unknown}; valid options: "
            f"{', '.join(valid) or '(none)'} (fusion_options in --config)"
        )


# ---------------------------------------------------------------------------------- evaluate
def evaluate_command(args: argparse.Namespace) -> int:
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
    manifest = manifest_for(clf, args.manifest, labelled=True)
    out = Path(args.out) if args.out else Path(args.model_dir) / f"eval-{stem(args.manifest)}"
    metrics = clf.evaluate(manifest, out, robustness=args.robustness)
    print(format_table(metrics))
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    return EXIT_OK


def _add_evaluate(sub) -> None:
    p = _command(sub, "evaluate", evaluate_command)
    p.add_argument("model_dir", help="model folder written by `mmfuse train` (its --out)")
    p.add_argument("manifest", help="labelled manifest with the model's input columns")
    p.add_argument("--out", metavar="DIR", help="report folder (default: MODEL_DIR/eval-<stem>)")
    p.add_argument(
        "--robustness",
        action="store_true",
        help="also score under noise, blur, ... at growing strengths (slower)",
    )
    add_device_flag(p, "cpu")


def _add_bridged(sub, name: str) -> None:
    import importlib

    module = importlib.import_module(f"mmfuse.cli.{name}")
    module.add_arguments(_command(sub, name, module.run))


# ---------------------------------------------------------------------------------- shared
# ---------------------------------------------------------------------------------- datasets, demo
def datasets_make_avdigits_command(args: argparse.Namespace) -> int:
    """Generate avdigits: ten digit classes, each sample an image, speech, a video and a caption.

    Writes DIR/train.csv, val.csv and test.csv with the media under DIR/media; the same
    --samples and --seed give the same files. Needs espeak-ng on PATH.

    examples:
      mmfuse datasets make avdigits data/avdigits
      mmfuse datasets make avdigits data/avdigits --samples 500 --seed 1
      mmfuse train data/avdigits/train.csv --val data/avdigits/val.csv
    """
    from mmfuse.data.avdigits import make_avdigits

    paths = make_avdigits(args.dir, samples=args.samples, seed=args.seed, workers=args.workers)
    for name, path in paths.items():
        print(f"{name}: {path}")
    if "train" in paths and "val" in paths:
        print(f"next: mmfuse train {paths['train']} --val {paths['val']}")
    return EXIT_OK


DATASETS_EXAMPLES = """examples:
  mmfuse datasets make avdigits data/avdigits
  mmfuse datasets make avdigits --help"""


def _add_datasets(sub) -> None:
    datasets = _group(sub, "datasets", "Make the example datasets.", DATASETS_EXAMPLES)
    make = _group(datasets, "make", "Generate an example dataset into a folder.", DATASETS_EXAMPLES)
    p = _command(make, "avdigits", datasets_make_avdigits_command)
    p.add_argument("dir", help="output folder")
    p.add_argument(
        "--samples", type=int, metavar="N", default=2000, help="samples in all (default: 2000)"
    )
    p.add_argument("--seed", type=int, metavar="N", default=0, help="generation seed (default: 0)")
    p.add_argument("--workers", type=int, metavar="N", help="processes (default: one per core)")


def demo_command(args: argparse.Namespace) -> int:
    """Run the whole pipeline on generated data: make a dataset, train, evaluate, predict.

    A few minutes on a laptop CPU; prints each step and where its files went.

    examples:
      mmfuse demo
      mmfuse demo --out demo-run --samples 300
    """
    from mmfuse.demo import run_demo

    run_demo(out_dir=Path(args.out) if args.out else None, samples=args.samples)
    return EXIT_OK


def _add_demo(sub) -> None:
    p = _command(sub, "demo", demo_command)
    p.add_argument("--out", metavar="DIR", help="folder for the data, run and report")
    p.add_argument(
        "--samples", type=int, metavar="N", help="dataset size (default: the demo's own)"
    )


# ---------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit 2), pointing at --help."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command(sub, name: str, fn) -> argparse.ArgumentParser:
    doc = inspect.cleandoc(fn.__doc__ or "")
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
    p.set_defaults(func=fn, prog=p.prog)
    return p


def _group(sub, name: str, summary: str, examples: str):
    """A command made of subcommands (`mmfuse datasets make ...`); alone it prints its help."""
    p = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def show_help(args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return EXIT_USAGE

    p.set_defaults(func=show_help, prog=p.prog)
    return p.add_subparsers(metavar="COMMAND")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mmfuse",
        description="Multimodal deep learning on image, audio, video and text.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_validate(sub)
    _add_train(sub)
    _add_evaluate(sub)
    for name in ("predict", "detect", "serve", "export", "compress"):
        _add_bridged(sub, name)
    _add_datasets(sub)
    _add_demo(sub)
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
    except (ManifestError, UsageError, ConfigError, EncoderError) as e:
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


if __name__ == "__main__":
    entry_point()
