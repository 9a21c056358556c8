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
import re
import sys
from pathlib import Path

from mmfuse.encoders.base import EncoderError
from mmfuse.errors import ManifestError, MmfuseError
from mmfuse.model.config import ConfigError

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130

# Flags of `mmfuse predict` for one sample: flag → modality of the model input it fills.
SAMPLE_FLAGS = ("image", "audio", "video", "text")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class UsageError(MmfuseError):
    """A command-line mistake (exit 2)."""


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
    _add_modality_flag(p)
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
    out = Path(args.out) if args.out else Path("runs") / _stem(args.manifest)
    if not args.resume and latest_checkpoint(out, verify=False) is not None:
        raise UsageError(
            f"--out {out} already holds a training run; add --resume to continue it, or give "
            "another --out"
        )
    modalities = _parse_pairs(args.modality, "--modality") or None
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
    _add_modality_flag(p)
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
    _add_device_flag(p, "auto")
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
    for key, name in _parse_pairs(args.encoder, "--encoder").items():
        entry = encoders.setdefault(key, {})
        if entry.get("encoder") != name:
            entry.pop("options", None)  # options of another encoder would not fit this one
        entry["encoder"] = name
    for key, text in _parse_pairs(args.encoder_options, "--encoder-options").items():
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
    _resolve_device(params.get("device", "auto"))
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

    clf = _load_classifier(args.model_dir, args.device)
    manifest = _manifest_for(clf, args.manifest, labelled=True)
    out = Path(args.out) if args.out else Path(args.model_dir) / f"eval-{_stem(args.manifest)}"
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
    _add_device_flag(p, "cpu")


# ---------------------------------------------------------------------------------- predict
def predict_command(args: argparse.Namespace) -> int:
    """Predict classes with a saved model, for a whole manifest or for one sample.

    With MANIFEST: a table with the row number, the model's input columns, `prediction` and,
    with --proba, one proba_<class> column per class; to stdout (CSV) or to --out. With --out the
    rows are streamed in chunks (bounded memory, decoding in --workers processes, a progress bar
    with ETA), an `error` column says why a row could not be read, --shard I/N takes one of N
    equal slices (their outputs concatenate to the whole), and --resume continues a killed run.

    For one sample, give its files with --image/--audio/--video and its text with --text;
    leave out any the sample lacks. Prints the label, then each class's probability. A model
    with two inputs of one modality takes each as --input COLUMN=VALUE.

    examples:
      mmfuse predict runs/train data/test.csv --out preds.csv --proba
      mmfuse predict runs/train corpus.parquet --out preds.parquet --shard 0/8 --workers 4
      mmfuse predict runs/train corpus.parquet --out preds.parquet --shard 0/8 --resume
      mmfuse predict runs/train data/test.csv > preds.csv
      mmfuse predict runs/train --image cat.jpg --text "a cat on a mat"
      mmfuse predict runs/train --video clip.mp4
    """
    sample = {f: getattr(args, f) for f in SAMPLE_FLAGS if getattr(args, f) is not None}
    columns = _parse_pairs(args.input, "--input")
    if args.manifest is not None and (sample or columns):
        raise UsageError(
            "give either a MANIFEST or one sample's --image/--audio/--video/--text, not both"
        )
    if args.manifest is None and not (sample or columns):
        raise UsageError(
            "nothing to predict: give a MANIFEST or a sample with --image, --audio, --video, "
            "--text or --input COLUMN=VALUE"
        )
    clf = _load_classifier(args.model_dir, args.device)
    task = args.task or clf.task_
    if task not in clf.labels_:
        raise UsageError(f"--task {task!r}: the model's tasks are {', '.join(clf.labels_)}")
    if args.manifest is not None and args.out is not None:
        return _predict_streamed(args, task)
    if args.shard or args.resume:
        raise UsageError("--shard and --resume write part files: give --out FILE too")
    if args.manifest is not None:
        return _predict_manifest(clf, args.manifest, task, args.out, args.proba)
    return _predict_sample(clf, sample, columns, task)


def _predict_streamed(args: argparse.Namespace, task: str) -> int:
    from mmfuse.infer.predictor import Predictor
    from mmfuse.infer.streamed import parse_shard, predict_manifest

    predictor = Predictor(args.model_dir, device=args.device)
    if task != predictor.task:
        raise UsageError("--task with --out: streamed prediction writes the model's first task")
    result = predict_manifest(
        predictor,
        args.manifest,
        args.out,
        shard=parse_shard(args.shard) if args.shard else (0, 1),
        resume=args.resume,
        batch_size=args.batch_size,
        workers=args.workers,
        proba=args.proba,
        log=lambda message: print(message, file=sys.stderr),
    )
    if result["failed"]:
        print(
            f"{result['failed']} of {result['rows']} rows could not be read; the `error` column "
            "says why",
            file=sys.stderr,
        )
    return EXIT_DATA if result["rows"] and result["failed"] == result["rows"] else EXIT_OK


def _predict_manifest(clf, source: str, task: str, out: str | None, with_proba: bool) -> int:
    import numpy as np
    import pandas as pd

    manifest = _manifest_for(clf, source, labelled=False)
    proba = clf.predict_proba(manifest, task)  # N×C, NaN rows could not be read
    classes = list(clf.labels_[task])
    ok = ~np.isnan(proba).any(axis=1)
    prediction = np.full(len(proba), None, dtype=object)
    prediction[ok] = np.array(classes, dtype=object)[proba[ok].argmax(axis=1)]

    table = pd.DataFrame({"row": np.arange(len(manifest))})
    inputs = _input_columns(clf)
    for column in [c for c in manifest.frame.columns if c in inputs]:  # the manifest's order
        table[column] = manifest.frame[column].to_numpy()
    table["prediction"] = prediction
    if with_proba:
        for i, name in enumerate(classes):
            table[f"proba_{name}"] = proba[:, i]
    if out is None:
        table.to_csv(sys.stdout, index=False)
    else:
        table.to_csv(out, index=False)
        print(f"wrote {len(table)} predictions to {out}", file=sys.stderr)
    failed = int((~ok).sum())
    if failed:
        print(
            f"{failed} of {len(table)} rows could not be read and have no prediction; "
            f"`mmfuse validate {source}` lists their files",
            file=sys.stderr,
        )
    return EXIT_DATA if failed == len(table) else EXIT_OK


def _predict_sample(clf, sample: dict[str, str], columns: dict[str, str], task: str) -> int:
    import numpy as np
    import pandas as pd

    from mmfuse.data import read_manifest, validate

    known = _input_columns(clf)
    row: dict[str, str | None] = dict.fromkeys(known)
    flag_of: dict[str, str] = {}
    for modality, value in sample.items():
        found = [c for c in known if modality in known[c]]
        if not found:
            inputs = ", ".join(f"{c} ({'/'.join(m)})" for c, m in known.items())
            raise UsageError(
                f"--{modality}: the model has no {modality} input; its inputs: {inputs}"
            )
        if len(found) > 1:
            raise UsageError(
                f"--{modality}: the model reads {modality} from the columns {found}; give each "
                "one as --input COLUMN=VALUE"
            )
        (column,) = found
        if row[column] is not None and row[column] != value:
            raise UsageError(f"{flag_of[column]} and --{modality} both fill column {column!r}")
        row[column], flag_of[column] = value, f"--{modality}"
    for column, value in columns.items():
        if column not in row:
            raise UsageError(f"--input {column}=: not an input column; the model's: {list(row)}")
        row[column], flag_of[column] = value, f"--input {column}"

    roles = {c: m[0] for c, m in known.items()}
    manifest = read_manifest(pd.DataFrame([row]), modalities=roles)
    for problem in validate(manifest):
        if problem.severity == "error" and problem.path is not None:
            raise MmfuseError(
                f"{flag_of.get(problem.column, problem.column)} {row[problem.column]}: cannot be "
                f"read ({problem.reason}: {problem.message})"
            )
    proba = clf.predict_proba(manifest, task)[0]
    if np.isnan(proba).any():
        raise MmfuseError("the sample could not be loaded; check its files with `mmfuse validate`")
    classes = list(clf.labels_[task])
    print(classes[int(proba.argmax())])
    width = max(len(c) for c in classes)
    for i in np.argsort(-proba, kind="stable"):
        print(f"  {classes[i]:<{width}}  {proba[i]:.4f}")
    return EXIT_OK


def _add_export(sub) -> None:
    from mmfuse.ship.export import add_export_arguments, export_command

    add_export_arguments(_command(sub, "export", export_command))


def _add_compress(sub) -> None:
    from mmfuse.ship.compress import add_compress_arguments, compress_command

    add_compress_arguments(_command(sub, "compress", compress_command))


def _add_serve(sub) -> None:
    from mmfuse.serve.app import add_serve_arguments, serve_command  # imports FastAPI

    p = _command(sub, "serve", serve_command)
    add_serve_arguments(p)


def _add_detect(sub) -> None:
    from mmfuse.infer.detect import add_detect_arguments, detect_command

    p = _command(sub, "detect", detect_command)
    add_detect_arguments(p)


def _add_predict(sub) -> None:
    p = _command(sub, "predict", predict_command)
    p.add_argument("model_dir", help="model folder written by `mmfuse train` (its --out)")
    p.add_argument("manifest", nargs="?", help="manifest with the model's input columns")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write the predictions to this .csv or .parquet file, streamed in chunks "
        "(default: CSV on stdout)",
    )
    p.add_argument("--proba", action="store_true", help="add one proba_<class> column per class")
    p.add_argument(
        "--shard", metavar="I/N", help="with --out: predict only slice I of N (0-based), e.g. 0/4"
    )
    p.add_argument(
        "--resume", action="store_true", help="with --out: continue a killed run from its parts"
    )
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    p.add_argument("--image", metavar="FILE", help="one sample: its image file")
    p.add_argument("--audio", metavar="FILE", help="one sample: its audio file")
    p.add_argument("--video", metavar="FILE", help="one sample: its video file")
    p.add_argument("--text", metavar="TEXT", help="one sample: its text")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="one sample: the value of an input column by name (repeatable)",
    )
    p.add_argument("--task", help="label column to predict (default: the model's first)")
    _add_device_flag(p, "cpu")


# ---------------------------------------------------------------------------------- shared
def _load_classifier(model_dir: str, device: str):
    from mmfuse.classifier import MultimodalClassifier
    from mmfuse.model.saved import CONFIG

    path = Path(model_dir)
    if not (path / CONFIG).is_file():
        raise UsageError(
            f"{model_dir} is not an mmfuse model folder (no {CONFIG}); give the folder that "
            "`mmfuse train --out` wrote"
        )
    return MultimodalClassifier.load(path, device=_resolve_device(device))


def _input_columns(clf) -> dict[str, list[str]]:
    """The model's input columns → the modalities read from each, in config order."""
    columns: dict[str, list[str]] = {}
    for spec in clf.model_config_.inputs.values():
        columns.setdefault(spec.column, []).append(spec.modality)
    return columns


def _manifest_for(clf, source: str, *, labelled: bool):
    """`source` read with the model's column roles; its input (and label) columns checked."""
    from mmfuse.data import read_manifest

    columns = _input_columns(clf)
    roles = {c: m[0] for c, m in columns.items()}
    tasks = list(clf.labels_)
    manifest = read_manifest(source, label=tasks if labelled else None, modalities=roles)
    missing = [c for c in columns if c not in manifest.frame.columns]
    if missing:
        raise UsageError(
            f"{manifest.source} lacks the input column(s) {missing} the model reads; its "
            f"columns: {list(manifest.frame.columns)}"
        )
    return manifest


def _resolve_device(name: str) -> str:
    from mmfuse.device import resolve_device

    try:
        return str(resolve_device(name))
    except MmfuseError as e:  # CUDA asked for but absent
        raise UsageError(str(e)) from None
    except RuntimeError as e:  # torch does not know the name
        raise UsageError(f"device {name!r}: {e}; use auto, cpu or cuda") from None


def _device_name(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return value


def _add_device_flag(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--device",
        type=_device_name,
        default=None if default == "auto" else default,
        metavar="DEVICE",
        help=f"auto (CUDA when present), cpu, cuda or cuda:N (default: {default})",
    )


def _add_modality_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--modality",
        action="append",
        default=[],
        metavar="COLUMN=ROLE",
        help="declare a column's role: image, audio, video, text, label or ignore (repeatable)",
    )


def _stem(manifest: str) -> str:
    path = Path(manifest)
    return path.stem if path.suffix else path.name


def _parse_pairs(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag} expects COLUMN=VALUE, got {pair!r}")
        out[key] = value
    return out


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
    _add_predict(sub)
    _add_detect(sub)
    _add_serve(sub)
    _add_export(sub)
    _add_compress(sub)
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
