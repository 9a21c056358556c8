"""An ensemble's model folder: one ordinary model folder per member, plus the weights.

    model/
        config.json        format, mmfuse version, {"ensemble": {members, weights, temperature}},
                           the ModelConfig the ensemble presents, the TrainConfig
        labels.json        {task: [class names]}
        members/<name>/    config.json, labels.json, model.safetensors (a model folder each)
        metrics.json, report.md, *.png

A member trained on folds (`--ensemble folds=K`) is a bag of K fold models, itself a folder of
this kind (`members/<name>/members/fold0/`, ...). Only members of weight > 0 are written.
Weights that members hold alike (a frozen pretrained encoder in every member and fold) are
written once, into `shared.safetensors` at the top; such a member's config.json names that file
(relative path) and which of its tensors are there, so it loads inside its ensemble folder.
Each member folder loads on its own with `load_model`; the ensemble's temperature lives in
config.json (members' own in their safetensors).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmfuse._version import __version__
from mmfuse.errors import CheckpointError
from mmfuse.model.config import ModelConfig
from mmfuse.model.ensemble import EnsembleModel, ensemble_config, ensemble_inputs
from mmfuse.model.multimodal import MultimodalModel
from mmfuse.model.saved import CONFIG, FORMAT, LABELS, copy_report, load_model, save_model

MEMBERS = "members"
SHARED = "shared.safetensors"


def build_ensemble(
    models: Mapping[str, MultimodalModel],
    configs: Mapping[str, ModelConfig],
    weights: Mapping[str, float],
) -> tuple[EnsembleModel, ModelConfig]:
    """The ensemble of `models` (in their order) and the ModelConfig it presents."""
    inputs, routes = ensemble_inputs(configs, models)
    config = ensemble_config(configs, inputs)
    model = EnsembleModel(models, weights, routes)
    share_storage(model)
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
    shared: SharedWeights | None = None,
) -> Path:
    """Write the ensemble folder: members of weight > 0 under `members/`, and no folder for
    a member of weight 0 (one its training left there is removed). A weight that several
    members hold bit for bit (a frozen pretrained encoder's) is written once, into
    `shared.safetensors` beside the top config.json (`shared`: the top call's, for a bag)."""
    path = Path(path)
    top = shared is None
    if top:
        shared = shared_weights(model, path)
    active = model.active()
    for name in model.members:
        folder = path / MEMBERS / name
        if name in active:
            own = model.member_train.get(name, train_config)
            member, member_config = model.members[name], model.member_configs[name]
            if isinstance(member, EnsembleModel):  # a bag of fold models: a folder of folders
                save_ensemble(folder, member, member_config, train_config=own, shared=shared)
            else:
                kept = shared.keys.get(id(member), {})
                link = (os.path.relpath(shared.root / SHARED, folder), kept) if kept else None
                save_model(folder, member, member_config, train_config=own, shared=link)
        elif folder.is_dir():
            shutil.rmtree(folder)
    # A model folder of a member this ensemble does not have (saved over one with more folds
    # or members) would point into a shared file rewritten without its tensors.
    for stale in sorted((path / MEMBERS).glob("*/" + CONFIG)):
        if stale.parent.name not in model.members:
            shutil.rmtree(stale.parent)
    if top:
        shared.write()
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


@dataclass
class SharedWeights:
    """The tensors several members hold alike, by content hash, and per member (by `id`)
    which of its state's keys are among them."""

    root: Path
    tensors: dict[str, torch.Tensor]
    keys: dict[int, dict[str, str]]

    def write(self) -> None:
        """`shared.safetensors` (none when nothing is shared: a stale one is removed)."""
        file = self.root / SHARED
        if self.tensors:
            save_file(self.tensors, file)
        elif file.is_file():
            file.unlink()


def shared_weights(model: EnsembleModel, root: Path) -> SharedWeights:
    """Which weights of `model`'s active models (bags opened) two or more of them hold bit
    for bit; tensors under 1,024 values are left in place (not worth a lookup)."""
    seen: dict[str, list] = {}
    for leaf, key, tensor, digest in _large_tensors(model, lambda leaf: leaf.state_dict().items()):
        seen.setdefault(digest, []).append((leaf, key, tensor))
    tensors, keys = {}, {}
    for digest, holders in seen.items():
        if len({id(leaf) for leaf, _, _ in holders}) > 1:
            tensors[digest] = holders[0][2].detach().cpu().contiguous()
            for leaf, key, _ in holders:
                keys.setdefault(id(leaf), {})[key] = digest
    return SharedWeights(root, tensors, keys)


def share_storage(model: EnsembleModel) -> None:
    """Make the weights that its models hold bit for bit (a frozen pretrained encoder in every
    member and fold) one tensor in memory: K × members copies of a 90 MB text encoder would
    otherwise all be resident. Tensors under 1,024 values are left alone."""
    first: dict[str, torch.Tensor] = {}

    def named(leaf):
        return [*leaf.named_parameters(), *leaf.named_buffers()]

    with torch.no_grad():
        for _, _, tensor, digest in _large_tensors(model, named):
            kept = first.setdefault(digest, tensor)
            if kept is not tensor and kept.device == tensor.device:
                tensor.data = kept.data


def _large_tensors(model: EnsembleModel, named):
    """`(leaf, name, tensor, content hash)` of each tensor of 1,024 values or more in the
    active models (`named(leaf)`: its `(name, tensor)` pairs). A storage already hashed (shared
    by `share_storage`, or by a bag built before its ensemble) is not read again."""
    by_storage: dict[tuple, str] = {}
    for _, leaf, _ in model.leaves():
        for name, tensor in named(leaf):
            if tensor.numel() < 1024:
                continue
            where = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape),
                     tensor.stride())  # fmt: skip
            if where not in by_storage:
                by_storage[where] = _content_hash(tensor)
            yield leaf, name, tensor, by_storage[where]


def _content_hash(tensor: torch.Tensor) -> str:
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


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
