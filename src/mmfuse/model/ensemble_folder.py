"""An ensemble's model folder: one ordinary model folder per member, plus the weights.

    model/
        config.json        format, mmfuse version, {"ensemble": {members, weights, temperature}},
                           the ModelConfig the ensemble presents, the TrainConfig
        labels.json        {task: [class names]}
        members/<name>/    config.json, labels.json, model.safetensors (a model folder each)
        metrics.json, report.md, *.png

A member trained on folds (`--ensemble folds=K`) is a bag of K fold models, itself a folder of
this kind (`members/<name>/members/fold0/`, ...). Only members of weight > 0 are written. Each member folder loads on its own with `load_model`;
the ensemble's temperature lives in config.json (members' own in their safetensors).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from mmfuse._version import __version__
from mmfuse.errors import CheckpointError
from mmfuse.model.config import ModelConfig
from mmfuse.model.ensemble import EnsembleModel, ensemble_config, ensemble_inputs
from mmfuse.model.multimodal import MultimodalModel
from mmfuse.model.saved import CONFIG, FORMAT, LABELS, copy_report, load_model, save_model

MEMBERS = "members"


def build_ensemble(
    models: Mapping[str, MultimodalModel],
    configs: Mapping[str, ModelConfig],
    weights: Mapping[str, float],
) -> tuple[EnsembleModel, ModelConfig]:
    """The ensemble of `models` (in their order) and the ModelConfig it presents."""
    inputs, routes = ensemble_inputs(configs, models)
    config = ensemble_config(configs, inputs)
    model = EnsembleModel(models, weights, routes)
    # What `save_ensemble` writes beside each member (its TrainConfig as a dict: the caller's).
    model.member_configs = dict(configs)
    model.member_train = {}
    return model, config


def save_ensemble(
    path: str | os.PathLike,
    model: EnsembleModel,
    config: ModelConfig,
    *,
    train_config: dict | None = None,
    spec: dict | None = None,
    report_dir: str | os.PathLike | None = None,
) -> Path:
    """Write the ensemble folder: members of weight > 0 under `members/`, and no folder for
    a member of weight 0 (one its training left there is removed)."""
    path = Path(path)
    active = model.active()
    for name in model.members:
        folder = path / MEMBERS / name
        if name in active:
            own = model.member_train.get(name, train_config)
            member, member_config = model.members[name], model.member_configs[name]
            if isinstance(member, EnsembleModel):  # a bag of fold models: a folder of folders
                save_ensemble(folder, member, member_config, train_config=own)
            else:
                save_model(folder, member, member_config, train_config=own)
        elif folder.is_dir():
            shutil.rmtree(folder)
    saved = {
        "format": FORMAT,
        "mmfuse_version": __version__,
        "ensemble": {
            "members": active,
            "weights": {n: model.weights[n] for n in active},
            "temperature": model.temperatures(),
            "spec": spec,
        },
        "model": config.to_dict(),
        "train": train_config,
    }
    labels = {h.task: h.classes for h in config.heads}
    (path / LABELS).write_text(json.dumps(labels, indent=2) + "\n")
    (path / CONFIG).write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    copy_report(report_dir, path)
    return path


def load_ensemble(path: Path, saved: dict, device: str | torch.device = "cpu"):
    """`(EnsembleModel, its ModelConfig, train config)` from an ensemble folder's config."""
    block = saved["ensemble"]
    if not isinstance(block, dict) or not block.get("members"):
        raise CheckpointError(
            path / CONFIG,
            "has an 'ensemble' entry without members; the folder is damaged: restore it or "
            "retrain with --ensemble",
        )
    models, configs, train = {}, {}, {}
    for name in block["members"]:
        folder = path / MEMBERS / name
        if not (folder / CONFIG).is_file():
            raise CheckpointError(
                folder,
                f"is missing: {CONFIG} lists member {name!r} but its folder is gone; copy the "
                "whole model folder again, or retrain",
            )
        models[name], configs[name], train[name] = load_model(folder, device)
    model, config = build_ensemble(models, configs, block.get("weights", {}))
    model.member_train = {n: t for n, t in train.items() if t is not None}
    model.set_temperatures(block.get("temperature", {}))
    return model.to(device).eval(), config, saved.get("train")
