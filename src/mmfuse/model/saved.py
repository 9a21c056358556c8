"""A saved model: a folder anyone can inspect, that loads without unpickling anything.

    model/
        config.json        format, mmfuse version, ModelConfig and TrainConfig
        labels.json        {task: [class names]}, index i names class i
        model.safetensors  every weight (encoders, fusion, heads)
        metrics.json, report.md, *.png   the evaluation, when there was one

A member of an ensemble may keep some tensors in the ensemble's `shared.safetensors` instead
(config.json's `shared_weights`: the file's path relative to the folder, and which tensors).
The model is rebuilt from config.json (each encoder's preprocessing follows from its name and
options), then the weights are loaded strictly: a missing or extra tensor is an error. Encoders
are built without reading their pretrained weights (model.safetensors replaces them), so a
saved model loads without the packages that ship those weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mmfuse._version import __version__
from mmfuse.encoders.base import without_pretrained_weights
from mmfuse.errors import CheckpointError, MmfuseError
from mmfuse.model.config import ModelConfig
from mmfuse.model.multimodal import MultimodalModel

# 2: every model carries a per-task `temperature` (format 1 folders load with T = 1), and a
# folder may hold an ensemble (`members/`, see `model.ensemble_folder`).
FORMAT = 2
CONFIG, LABELS, WEIGHTS = "config.json", "labels.json", "model.safetensors"
REPORT_FILES = ("metrics.json", "report.md")


def save_model(
    path: str | os.PathLike,
    model: MultimodalModel,
    config: ModelConfig,
    *,
    train_config: dict | None = None,
    report_dir: str | os.PathLike | None = None,
    shared: tuple[str, dict[str, str]] | None = None,
) -> Path:
    """Write the model folder; copy report.md, metrics.json and PNGs from `report_dir`.
    `shared`: `(file, {state key: name in it})`, tensors an ensemble keeps once in `file`
    (a path relative to this folder), left out of model.safetensors."""
    path = Path(path)
    bad = first_nonfinite(model)
    if bad is not None:
        raise CheckpointError(
            path,
            f"not written: weight {bad!r} holds NaN or Inf, so the model would predict nothing; "
            "retrain (a lower --lr, or fix the data that made the loss non-finite)",
        )
    elsewhere = shared[1] if shared else {}
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if k not in elsewhere
    }
    labels = {h.task: h.classes for h in config.heads}
    saved = {
        "format": FORMAT,
        "mmfuse_version": __version__,
        "model": config.to_dict(),
        "train": train_config,
    }
    if shared:
        saved["shared_weights"] = {"file": shared[0], "tensors": dict(elsewhere)}
    try:
        path.mkdir(parents=True, exist_ok=True)
        save_file(state, path / WEIGHTS, metadata={"format": str(FORMAT)})
        (path / LABELS).write_text(json.dumps(labels, indent=2) + "\n")
        (path / CONFIG).write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        free = shutil.disk_usage(path if path.exists() else path.parent).free / 2**20
        raise CheckpointError(
            path,
            f"the model folder could not be written ({e.strerror or e}; {free:.0f} MiB free); "
            "free some space or save elsewhere",
        ) from None
    copy_report(report_dir, path)
    return path


def copy_report(report_dir: str | os.PathLike | None, path: Path) -> None:
    """Copy a run's report (report.md, metrics.json, the PNGs) into model folder `path`."""
    if report_dir is None:
        return
    report_dir = Path(report_dir)
    files = [report_dir / n for n in REPORT_FILES] + sorted(report_dir.glob("*.png"))
    for f in files:
        if f.is_file() and f.resolve() != (path / f.name).resolve():
            shutil.copy2(f, path / f.name)


def first_nonfinite(model: torch.nn.Module, trained_only: bool = False) -> str | None:
    """The name of the first floating-point weight or buffer holding NaN or Inf, else None.

    `trained_only` skips the weights that do not train (frozen encoders): training cannot
    change them, and checking a pretrained backbone after every epoch of a fit over cached
    features cost more than the epoch."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad} if trained_only else ()
    for name, tensor in model.state_dict().items():
        if name in frozen or not tensor.is_floating_point():
            continue
        if not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _build(path: Path, saved: dict) -> tuple[MultimodalModel, ModelConfig]:
    """The model `config.json` describes, at random weights; a config that cannot be built
    (edited, damaged, or naming an encoder this mmfuse lacks) is a data problem, not a crash."""
    try:
        config = ModelConfig.from_dict(saved["model"])
        with without_pretrained_weights():
            return MultimodalModel.from_config(config), config
    except (MmfuseError, ValueError, TypeError, KeyError, RuntimeError) as e:
        raise CheckpointError(
            path / CONFIG,
            f"describes a model that cannot be built ({e}); it was edited or damaged, or "
            "needs a newer mmfuse: restore the folder, upgrade mmfuse, or retrain",
        ) from None


def read_folder_json(path: Path, name: str, what: str, written_by: str):
    """The JSON file `name` of a saved folder; a missing or unreadable one is a CheckpointError
    naming the folder (`what` it should be, and `written_by` what writes one)."""
    file = path / name
    if not file.is_file():
        raise CheckpointError(
            path, f"is not {what} (no {name}); give the folder that {written_by} wrote"
        )
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            file, f"cannot be read as JSON ({e}); the folder is damaged"
        ) from None


def read_saved_config(path: str | os.PathLike) -> dict:
    """config.json of a model folder, checked for a format this mmfuse can read."""
    path = Path(path)
    file = path / CONFIG
    saved = read_folder_json(
        path,
        CONFIG,
        "an mmfuse model folder",
        "`mmfuse train --out` or `MultimodalClassifier.save`",
    )
    fmt = saved.get("format") if isinstance(saved, dict) else None
    if not isinstance(fmt, int):
        raise CheckpointError(file, "has no integer 'format'; it was not written by mmfuse")
    if fmt > FORMAT:
        raise CheckpointError(
            file,
            f"was written by mmfuse {saved.get('mmfuse_version', '?')} in model format {fmt}; "
            f"this is mmfuse {__version__}, which reads format {FORMAT} and older. Upgrade "
            "mmfuse (pip install -U mmfuse) to load it",
        )
    return saved


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """`(model, ModelConfig, train config dict or None)` from a model folder; an ensemble
    folder gives an `EnsembleModel` and the ModelConfig it presents."""
    path = Path(path)
    saved = read_saved_config(path)
    if "ensemble" in saved:
        from mmfuse.model.ensemble_folder import load_ensemble

        return load_ensemble(path, saved, device)
    model, config = _build(path, saved)
    try:
        state = load_file(path / WEIGHTS, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            path / WEIGHTS,
            f"cannot be read as safetensors ({e}); the file is missing or damaged: copy it "
            "again, or retrain",
        ) from None
    state.update(_shared_part(path, saved.get("shared_weights"), device))
    own = model.state_dict()
    if saved["format"] < 2:  # written before calibration existed: uncalibrated, T = 1
        state.setdefault("temperature", own["temperature"])
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            path / WEIGHTS,
            f"does not match {CONFIG}: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "the two files come from different models",
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # same names, other shapes
        raise CheckpointError(
            path / WEIGHTS, f"does not match {CONFIG}: {str(e).splitlines()[-1].strip()}"
        ) from None
    model.to(device).eval()
    return model, config, saved.get("train")


def _shared_part(path: Path, link, device) -> dict:
    """The tensors a member of an ensemble keeps in the ensemble's shared file (none: {})."""
    if not link:
        return {}
    file = path / link["file"]
    try:
        with safe_open(file, framework="pt", device=str(device)) as f:
            return {key: f.get_tensor(name) for key, name in link["tensors"].items()}
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(
            path,
            f"keeps {len(link['tensors'])} weights in {link['file']}, the ensemble folder's "
            f"shared file, which cannot be read ({e}); load the whole ensemble folder, or copy "
            "it again",
        ) from None
