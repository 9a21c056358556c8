"""`mmfuse predict`: classes for a whole manifest (streamed with --out) or for one sample."""

from __future__ import annotations

import argparse
import sys

from mmfuse.cli.common import (
    EXIT_DATA,
    EXIT_OK,
    UsageError,
    add_device_flag,
    add_model_dir,
    check_some_rows,
    input_columns,
    load_predictor,
    manifest_for,
    parse_pairs,
)
from mmfuse.errors import MmfuseError

# Flags of `mmfuse predict` for one sample: flag → modality of the model input it fills.
SAMPLE_FLAGS = ("image", "audio", "video", "text")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_dir(p)
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
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=4096,
        metavar="N",
        help="with --out: rows per part file; a kill loses at most one part (default 4096)",
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
    add_device_flag(p, "cpu")


def run(args: argparse.Namespace) -> int:
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
    columns = parse_pairs(args.input, "--input")
    if args.manifest is not None and (sample or columns):
        raise UsageError(
            "give either a MANIFEST or one sample's --image/--audio/--video/--text, not both"
        )
    if args.manifest is None and not (sample or columns):
        raise UsageError(
            "nothing to predict: give a MANIFEST or a sample with --image, --audio, --video, "
            "--text or --input COLUMN=VALUE"
        )
    predictor = load_predictor(args.model_dir, args.device)
    task = args.task or predictor.task
    if task not in predictor.labels:
        raise UsageError(f"--task {task!r}: the model's tasks are {', '.join(predictor.labels)}")
    if args.manifest is not None and args.out is not None:
        return _predict_streamed(predictor, args, task)
    if args.shard or args.resume:
        raise UsageError("--shard and --resume write part files: give --out FILE too")
    if args.manifest is not None:
        return _predict_manifest(predictor, args, task)
    return _predict_sample(predictor, args, sample, columns, task)


def _predict_streamed(predictor, args: argparse.Namespace, task: str) -> int:
    from mmfuse.infer.streamed import parse_shard, predict_manifest

    if task != predictor.task:
        raise UsageError("--task with --out: streamed prediction writes the model's first task")
    if args.chunk_rows < 1:
        raise UsageError(f"--chunk-rows {args.chunk_rows}: give at least 1 row per part")
    result = predict_manifest(
        predictor,
        args.manifest,
        args.out,
        shard=parse_shard(args.shard) if args.shard else (0, 1),
        resume=args.resume,
        batch_size=args.batch_size,
        chunk_rows=args.chunk_rows,
        workers=args.workers,
        proba=args.proba,
        log=lambda message: print(message, file=sys.stderr),
    )
    check_some_rows(result, args.out, "a prediction")
    return EXIT_OK


def _probabilities(predictor, manifest, args: argparse.Namespace, task: str):
    """`(N×C probabilities of `task` for every row, why a row has none)`: NaN and a reason
    where the row could not be read or its probabilities are not finite."""
    import numpy as np

    from mmfuse.infer.streamed import predict_rows

    rows = list(range(len(manifest)))
    dataset = predictor.dataset(manifest)
    proba, errors = predict_rows(
        predictor, dataset, rows, task=task, batch_size=args.batch_size, workers=args.workers
    )
    return proba.astype(np.float64), errors  # float64, as MultimodalClassifier gives them


def _predict_manifest(predictor, args: argparse.Namespace, task: str) -> int:
    from mmfuse.infer.streamed import NON_FINITE
    from mmfuse.infer.table import prediction_table

    manifest = manifest_for(predictor.config, args.manifest, labelled=False)
    proba, errors = _probabilities(predictor, manifest, args, task)
    table = prediction_table(
        manifest.frame,
        range(len(manifest)),
        input_columns(predictor.config),
        predictor.labels[task],
        proba,
        with_proba=args.proba,
    )
    table.to_csv(sys.stdout, index=False)
    non_finite = [i for i, e in enumerate(errors) if e == NON_FINITE]
    unreadable = [i for i, e in enumerate(errors) if e is not None and e != NON_FINITE]
    if unreadable:
        print(
            f"{len(unreadable)} of {len(table)} rows could not be read and have no prediction; "
            f"`mmfuse validate {args.manifest}` lists their files",
            file=sys.stderr,
        )
    if non_finite:
        print(
            f"{len(non_finite)} of {len(table)} rows have no prediction: the model's "
            f"probabilities for them are NaN or Inf (e.g. row {non_finite[0]}); check their "
            "inputs for extreme values, and that the model's weights are finite",
            file=sys.stderr,
        )
    failed = len(unreadable) + len(non_finite)
    return EXIT_DATA if failed == len(table) else EXIT_OK


def _sample_row(known: dict[str, list[str]], sample: dict[str, str], columns: dict[str, str]):
    """The one-row manifest's cells from --image/--audio/--video/--text and --input, and the
    flag that filled each column (for error messages)."""
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
    return row, flag_of


def _predict_sample(predictor, args, sample: dict[str, str], columns: dict[str, str], task: str):
    import numpy as np
    import pandas as pd

    from mmfuse.data import read_manifest, validate
    from mmfuse.infer.streamed import NON_FINITE

    known = input_columns(predictor.config)
    row, flag_of = _sample_row(known, sample, columns)
    roles = {c: m[0] for c, m in known.items()}
    manifest = read_manifest(pd.DataFrame([row]), modalities=roles)
    for problem in validate(manifest):
        if problem.severity == "error" and problem.path is not None:
            raise MmfuseError(
                f"{flag_of.get(problem.column, problem.column)} {row[problem.column]}: cannot be "
                f"read ({problem.reason}: {problem.message})"
            )
    (proba,), (error,) = _probabilities(predictor, manifest, args, task)
    if error == NON_FINITE:
        raise MmfuseError(
            "the model's probabilities for this sample are NaN or Inf, so there is no "
            "prediction; check its inputs for extreme values, and that the model's weights "
            "are finite"
        )
    if error is not None:
        raise MmfuseError(
            f"the sample could not be loaded ({error}); check its files with `mmfuse validate`"
        )
    classes = list(predictor.labels[task])
    print(classes[int(proba.argmax())])
    width = max(len(c) for c in classes)
    for i in np.argsort(-proba, kind="stable"):
        print(f"  {classes[i]:<{width}}  {proba[i]:.4f}")
    return EXIT_OK
