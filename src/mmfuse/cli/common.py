"""What every command shares: exit codes, the usage error, and argument types written once
(device, model folder, COLUMN=VALUE pairs, column roles)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from mmfuse.errors import MmfuseError

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class UsageError(MmfuseError):
    """A command-line mistake (exit 2)."""


def device_name(value: str) -> str:
    """argparse type of `--device`: a name torch knows, checked before anything loads."""
    if not _DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return value


def add_device_flag(p: argparse.ArgumentParser, default: str, what: str = "") -> None:
    """`--device`, the same in every command; `what` says what runs there (e.g. "fine-tuning")."""
    p.add_argument(
        "--device",
        type=device_name,
        default=None if default == "auto" else default,
        metavar="DEVICE",
        help=(f"{what} device: " if what else "")
        + f"auto (CUDA when present), cpu, cuda or cuda:N (default: {default})",
    )


def resolve_device(name: str | None, default: str = "cpu") -> str:
    """The torch device a `--device` value names, or a UsageError that says what to give."""
    from mmfuse.device import resolve_device as resolve

    name = name or default
    try:
        return str(resolve(name))
    except MmfuseError as e:  # CUDA asked for but absent
        raise UsageError(str(e)) from None
    except RuntimeError as e:  # torch does not know the name
        raise UsageError(f"device {name!r}: {e}; use auto, cpu or cuda") from None


def model_folder(path: str) -> Path:
    """A folder `mmfuse train --out` wrote, or a UsageError naming what is missing."""
    from mmfuse.model.saved import CONFIG

    folder = Path(path)
    if not (folder / CONFIG).is_file():
        raise UsageError(
            f"{path} is not an mmfuse model folder (no {CONFIG}); give the folder that "
            "`mmfuse train --out` wrote"
        )
    return folder


def add_model_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="model folder written by `mmfuse train` (its --out)")


def parse_pairs(pairs: list[str], flag: str) -> dict[str, str]:
    """`["a=1", "b=x"]` → `{"a": "1", "b": "x"}`; anything else is a UsageError naming `flag`."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag} expects COLUMN=VALUE, got {pair!r}")
        out[key] = value
    return out


def add_modality_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--modality",
        action="append",
        default=[],
        metavar="COLUMN=ROLE",
        help=(
            "declare a column's role: image, audio, video, text, numeric, categorical, label or "
            "ignore (repeatable)"
        ),
    )


def stem(manifest: str) -> str:
    """A manifest's name without its suffix (`data/test.csv` → `test`)."""
    path = Path(manifest)
    return path.stem if path.suffix else path.name


def load_classifier(model_dir: str, device: str | None):
    """The MultimodalClassifier saved in `model_dir`, on the torch device `--device` names."""
    from mmfuse.classifier import MultimodalClassifier

    folder = model_folder(model_dir)
    return MultimodalClassifier.load(folder, device=resolve_device(device))


def load_predictor(model_dir: str, device: str | None):
    """The Predictor of `model_dir` (checked to be a model folder) on the `--device` named."""
    from mmfuse.infer.predictor import Predictor

    folder = model_folder(model_dir)
    return Predictor(folder, device=resolve_device(device))


def input_columns(config) -> dict[str, list[str]]:
    """A ModelConfig's input columns → the modalities read from each, in config order."""
    columns: dict[str, list[str]] = {}
    for spec in config.inputs.values():
        columns.setdefault(spec.column, []).append(spec.modality)
    return columns


def manifest_for(config, source: str, *, labelled: bool):
    """`source` read with a ModelConfig's column roles; its input (and label) columns checked."""
    from mmfuse.data import read_manifest

    columns = input_columns(config)
    roles = {c: m[0] for c, m in columns.items()}
    tasks = [head.task for head in config.heads]
    manifest = read_manifest(source, label=tasks if labelled else None, modalities=roles)
    missing = [c for c in columns if c not in manifest.frame.columns]
    if missing:
        raise UsageError(
            f"{manifest.source} lacks the input column(s) {missing} the model reads; its "
            f"columns: {list(manifest.frame.columns)}"
        )
    return manifest


# --max-* flag → the Budgets field it sets (mmfuse.data.budgets), for every reader in the run.
BUDGET_FLAGS = {
    "max_audio_seconds": ("audio_seconds", float, "seconds of audio one read may decode"),
    "max_image_pixels": ("image_pixels", int, "pixels of one decoded image or video frame"),
    "max_image_aspect": ("image_aspect", float, "longer over shorter side of an image"),
    "max_video_pixels": ("video_pixels", int, "frames × pixels of one video read"),
}


def add_budget_flags(p: argparse.ArgumentParser) -> None:
    """The decode budgets as flags (default: the MMFUSE_MAX_* variables, else the built-ins)."""
    from mmfuse.data.budgets import ENV

    for flag, (field, kind, what) in BUDGET_FLAGS.items():
        p.add_argument(
            "--" + flag.replace("_", "-"),
            type=kind,
            metavar="N",
            help=f"{what}; a file over it is refused as too large (default: ${ENV[field]} "
            "or the built-in limit)",
        )


def apply_budget_flags(args: argparse.Namespace) -> None:
    """Set the variables the readers consult (DataLoader workers and uvicorn workers inherit
    them), after checking each value the way `Budgets` does."""
    from mmfuse.data.budgets import ENV, Budgets

    given = {
        field: getattr(args, flag)
        for flag, (field, _, _) in BUDGET_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    try:
        Budgets(**given)
    except MmfuseError as e:
        raise UsageError(f"{e} (a --max-* flag)") from None
    for field, value in given.items():
        os.environ[ENV[field]] = str(value)


def check_some_rows(result: dict, out, got: str) -> None:
    """A streamed job whose every row failed is a data problem (exit 1), not a success."""
    if result["rows"] and result["failed"] == result["rows"]:
        raise MmfuseError(
            f"none of the {result['rows']} rows got {got}; the `error` column of {out} says why"
        )
