"""`mmfuse train MANIFEST`: MultimodalClassifier.fit on a manifest, then .save(--out).

Parameters come from the --config file first and the flags over it; both are checked here
(fusion name and options, device, encoder choices) so that a mistake is a one-line usage error
before any data loads.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from pathlib import Path

from mmfuse.cli.common import (
    EXIT_OK,
    UsageError,
    add_device_flag,
    add_modality_flag,
    parse_pairs,
    resolve_device,
    stem,
)
from mmfuse.cli.ensemble_options import add_ensemble_flags, apply_ensemble_flags, members_table
from mmfuse.train.presets import PRESETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    _add_data_flags(p)
    _add_model_flags(p)
    _add_loop_flags(p)
    add_ensemble_flags(p)


def run(args: argparse.Namespace) -> int:
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
      mmfuse train data/train.csv --preset best
      mmfuse train data/train.csv --encoder image=resnet18 --freeze image
      mmfuse train data/train.csv --encoder text=hf:models/minilm --freeze text
      mmfuse train data/train.csv --encoder-options image='{"width": 16, "stages": 3}'
      mmfuse train data/train.csv --config train.json --lr 3e-4 --out runs/lr3e-4
      mmfuse train data/train.csv --out runs/lr3e-4 --resume
      mmfuse train lists/train.csv --val lists/val.csv --root /data/media
      mmfuse train data/train.csv --val data/val.csv --ensemble fusion=attention,gated,late
      mmfuse train data/train.csv --val data/val.csv --ensemble seeds=3 --monitor accuracy
    """
    from mmfuse.classifier import MultimodalClassifier

    params = _train_params(args)
    out = _run_folder(args)
    train, val = _read_data(args)
    clf = MultimodalClassifier(**params, out_dir=out, verbose=True)
    try:
        clf.fit(train, val=val, resume=args.resume, robustness=args.robustness)
    except KeyboardInterrupt:
        print(f"\ninterrupted; to continue, run the same command with --resume (--out {out})")
        raise
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK  # under torchrun, rank 0 saves the model and prints the report
    _save_and_report(clf, out)
    return EXIT_OK


# ---------------------------------------------------------------------------------- flags
def _add_data_flags(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--root",
        metavar="DIR",
        help="folder the manifests' relative paths resolve against (default: each manifest's "
        "own folder)",
    )
    add_modality_flag(p)
    p.add_argument(
        "--robustness",
        action="store_true",
        help="add robustness curves (noise, blur, ... at growing strengths) on --val to the "
        "report (slower: each strength is a pass through every encoder)",
    )


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    from mmfuse import encoders, fusion

    p.add_argument("--config", metavar="FILE", help="JSON of classifier parameters (see above)")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        help="fast: small encoders from scratch; medium: pretrained encoders, frozen, features "
        "cached; best: pretrained encoders fine-tuned after a head warm-up (default: medium "
        "where the pretrained weights are installed, else fast); --encoder overrides it per column",
    )
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


def _add_loop_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="passes over the training data (default: 10; when every encoder is frozen, "
        "as with --preset medium, enough for 500 optimiser steps, 40 to 200)",
    )
    p.add_argument("--batch-size", type=int, metavar="N", help="samples per step (default: 32)")
    p.add_argument("--lr", type=float, metavar="X", help="learning rate (default: 1e-3)")
    p.add_argument(
        "--seed", type=int, metavar="N", help="seed of weights, shuffling and augmentation"
    )
    add_device_flag(p, "auto")
    p.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="data-loading processes, or auto: the cores left after this one, none below 256 "
        "rows or when the model trains on a CPU of 2 cores or fewer (default: auto)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="print each epoch's time in read/decode, preprocessing, host→device, forward, "
        "backward and optimiser, and the share of it the model was busy",
    )
    p.add_argument("--out", metavar="DIR", help="run and model folder (default: runs/<stem>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")


# ---------------------------------------------------------------------------------- the run
def _run_folder(args: argparse.Namespace) -> Path:
    """--out, refused when it already holds a run that --resume does not continue."""
    from mmfuse.train.checkpoint import latest_checkpoint

    out = Path(args.out) if args.out else Path("runs") / stem(args.manifest)
    ensemble_run = (out / "members").is_dir()
    if not args.resume and (ensemble_run or latest_checkpoint(out, verify=False) is not None):
        raise UsageError(
            f"--out {out} already holds a training run; add --resume to continue it, or give "
            "another --out"
        )
    return out


def _read_data(args: argparse.Namespace):
    """The training manifest and the --val one (or None), their summaries printed."""
    from mmfuse.data import read_manifest

    modalities = parse_pairs(args.modality, "--modality") or None
    label = args.label[0] if len(args.label) == 1 else (args.label or None)
    train = read_manifest(args.manifest, label=label, modalities=modalities, root=args.root)
    if not train.labels:
        raise UsageError(
            f"{train.source} has no column named label, class, target, ...; name the label "
            "column with --label COLUMN"
        )
    val = None
    if args.val:
        val = read_manifest(args.val, label=train.labels, modalities=modalities, root=args.root)
    print(train.summary())
    if val is not None:
        print(val.summary())
    print()
    return train, val


def _save_and_report(clf, out: Path) -> None:
    from mmfuse.evaluate.metrics import format_table

    model_dir = clf.save(out)
    if clf.evaluation_ is not None:
        print()
        if getattr(clf, "validation_", {}).get("rows") == "out-of-fold rows":
            print("scores out of fold: each training and --val row predicted by the fold model")
            print("that did not train on it (--ensemble folds; no row was held out)")
        print(format_table(clf.evaluation_["metrics"]))
        if "members" in clf.evaluation_:
            print()
            print(members_table(clf.evaluation_))
        print(f"\nreport: {model_dir / 'report.md'}")
    else:
        print(f"\nno --val given, so no evaluation; run: mmfuse evaluate {model_dir} MANIFEST")
    print(f"model folder: {model_dir}")


# ---------------------------------------------------------------------------------- parameters
def _train_params(args: argparse.Namespace) -> dict:
    """MultimodalClassifier parameters: the --config file, then the flags over it."""
    params = _read_config(args.config) if args.config else {}
    flags = {
        "fusion": args.fusion,
        "preset": args.preset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "workers": args.workers,
    }
    params.update({k: v for k, v in flags.items() if v is not None})
    if args.profile:
        params["train_options"] = {**params.get("train_options", {}), "profile": True}
    encoders = _config_encoders(params.get("encoders") or {})
    _apply_encoder_flags(encoders, args)
    if encoders:
        params["encoders"] = encoders
    _check_fusion(params.get("fusion", "attention"), params.get("fusion_options") or {})
    resolve_device(params.get("device"), default="auto")
    apply_ensemble_flags(params, args)
    return params


def _config_encoders(choices: dict) -> dict[str, dict]:
    """--config's `encoders`: a name or an object of InputConfig fields per key → objects."""
    encoders = {}
    for key, choice in choices.items():
        if isinstance(choice, str):
            choice = {"encoder": choice}
        if not isinstance(choice, dict):
            raise UsageError(
                f"--config: encoders[{key!r}] must be an encoder name or an object of InputConfig "
                f"fields, got {choice!r}"
            )
        encoders[key] = dict(choice)
    return encoders


def _apply_encoder_flags(encoders: dict[str, dict], args: argparse.Namespace) -> None:
    """--encoder, --encoder-options and --freeze over the config's encoder objects."""
    for key, name in parse_pairs(args.encoder, "--encoder").items():
        entry = encoders.setdefault(key, {})
        if entry.get("encoder") != name:
            entry.pop("options", None)  # options of another encoder would not fit this one
        entry["encoder"] = name
    for key, text in parse_pairs(args.encoder_options, "--encoder-options").items():
        entry = encoders.setdefault(key, {})
        entry["options"] = {**entry.get("options", {}), **_json_object(key, text)}
    for key in args.freeze:
        encoders.setdefault(key, {})["mode"] = "freeze"


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 0, got {text!r}")
    return value


def _json_object(key: str, text: str) -> dict:
    try:
        options = json.loads(text)
    except json.JSONDecodeError:
        options = None
    if not isinstance(options, dict):
        raise UsageError(
            f"--encoder-options {key}= expects a JSON object such as "
            f"'{{\"width\": 16}}', got {text!r}"
        )
    return options


def _read_config(path: str) -> dict:
    """A --config file: MultimodalClassifier parameters, TrainConfig fields allowed flat."""
    from mmfuse.classifier import MultimodalClassifier
    from mmfuse.train.config import TrainConfig

    data = _load_config_file(path)
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


def _load_config_file(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"--config {path} cannot be read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--config {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must hold a JSON object, got {type(data).__name__}")
    return data


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
