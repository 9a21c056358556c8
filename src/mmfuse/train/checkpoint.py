"""Crash-safe training checkpoints: a SIGKILL at any instant leaves the previous one usable.

Layout of a run folder::

    run_dir/
        ckpt-00000200/            one checkpoint per save, named <tag>-<step:08d>
            model.safetensors     weights (tied tensors stored once, see `safetensors.torch.save_model`)
            state.pt              everything else, readable by `torch.load(weights_only=True)`
            config.json           optional run config (JSON), as passed to `save_checkpoint`
            meta.json             format version, epoch, step, sha256 + size of the files above
        best-00000150/            `mark_best` hard-links the files of the best checkpoint here
        frozen-<sha256>.safetensors   frozen tensors the checkpoints share (`_ckpt_frozen`)
        .tmp-ckpt-00000300-...    a save in progress or killed mid-way: always ignored

A model whose frozen tensors (no gradient; buffers of modules in eval mode) make 8 MiB or more
keeps them out of each checkpoint's model.safetensors: they are written once into the frozen
file that meta.json names and loaded from it, and the file goes when no checkpoint names it.

A checkpoint is built in a `.tmp-` folder (each file flushed and fsynced, meta.json last, the
folder fsynced), renamed into place with one `os.replace` (a directory rename is atomic on
POSIX) and the run folder fsynced, so a `ckpt-*` folder is either absent or complete. A folder is
trusted only if meta.json exists and every file's size and sha256 match it, which also catches
bit rot and hand-copied partial folders. Older checkpoints are pruned only after the new one is
in place, and a pruned folder is first renamed to `.trash-...` so a crash mid-delete never leaves a
half-deleted `ckpt-*` folder.

Nothing here ever unpickles arbitrary objects: weights go through safetensors, the rest through
`torch.load(weights_only=True)`, so RNG states are converted to tensors, lists and dicts. A file
that is damaged, foreign or malicious raises `CheckpointError` naming the file and what to do.

One process saves into a run folder at a time (rank 0 under DDP). Steps only grow within a run:
latest means highest step, so resume from an older checkpoint into a fresh run folder.

This module saves and loads; the parts live beside it: `_ckpt_format` (file names, meta.json,
verification), `_ckpt_io` (durable writes, scratch folders), `_ckpt_store` (latest, best,
pruning) and `rng_state` (every RNG as weights-only data).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model

from mmfuse.errors import CheckpointError
from mmfuse.model.saved import first_nonfinite
from mmfuse.train import _ckpt_frozen, _ckpt_io, _ckpt_store
from mmfuse.train._ckpt_format import (
    CONFIG_FILE,
    FORMAT,
    META_FILE,
    MODEL_FILE,
    REQUIRED_FILES,
    STATE_FILE,
    TAG,
    TRY_OLDER,
    VERSION,
    check_weights_only,
    describe,
    read_meta,
    verify_checkpoint,
)
from mmfuse.train._ckpt_store import best_checkpoint, latest_checkpoint, mark_best
from mmfuse.train._ckpt_store import remove_all as remove_checkpoints
from mmfuse.train.rng_state import capture_rng_state, restore_rng_state

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "META_FILE",
    "MODEL_FILE",
    "STATE_FILE",
    "VERSION",
    "CheckpointError",
    "best_checkpoint",
    "capture_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "mark_best",
    "remove_checkpoints",
    "restore_rng_state",
    "save_checkpoint",
    "verify_checkpoint",
]


# --------------------------------------------------------------------------- save


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    epoch: int,
    step: int,
    best_metric: float | None = None,
    extra: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    generators: Mapping[str, Any] | None = None,
    tag: str = "ckpt",
    keep_last: int | None = 2,
    frozen_min_bytes: int | None = _ckpt_frozen.MIN_BYTES,
) -> Path:
    """Write `run_dir/<tag>-<step:08d>/` atomically and return its path.

    `extra` holds any further resumable state and may contain only tensors, numbers, strings,
    None, lists, tuples and dicts (checked up front, so a bad value fails before any write).
    `config` (JSON-safe) is stored as config.json. `generators` are named data-order RNGs saved
    with the global ones. Afterwards only the newest `keep_last` complete `<tag>-*` checkpoints
    are kept (None keeps all); the one just written is never pruned. Frozen tensors (no
    gradient, or buffers of modules in eval mode) of at least `frozen_min_bytes` together go
    to a `frozen-<sha256>.safetensors` in `run_dir` that checkpoints share (None: never).
    """
    run_dir = Path(run_dir)
    _check_arguments(tag, epoch, step, keep_last)
    trained, frozen = _ckpt_frozen.split(model, frozen_min_bytes)
    state = {
        "format": FORMAT,
        "version": VERSION if frozen else 1,
        "epoch": epoch,
        "step": step,
        "best_metric": None if best_metric is None else float(best_metric),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": capture_rng_state(generators),
        "extra": dict(extra or {}),
    }
    check_weights_only(state, "state")
    config_text = _config_text(config)
    final = run_dir / f"{tag}-{step:08d}"
    older = [p for s, p in _ckpt_store.checkpoints(run_dir, tag) if s < step]
    kept = f"the last checkpoint, {older[0]}, is untouched" if older else ""
    _check_finite(model, final, kept)
    _warn_if_newer(run_dir, tag, step)
    need = _ckpt_io.tensor_bytes([trained, frozen, state])
    with _ckpt_io.no_space_is_an_error(run_dir, f"checkpoint {final.name}", need=need, kept=kept):
        run_dir.mkdir(parents=True, exist_ok=True)
        split = (trained, _ckpt_frozen.store(run_dir, frozen)) if frozen else None
        _write_folder(final, model, state, config_text, split)
        if keep_last is not None:
            _ckpt_store.prune(run_dir, tag, keep_last, final)
    return final


def _warn_if_newer(run_dir: Path, tag: str, step: int) -> None:
    newer = [p for s, p in _ckpt_store.checkpoints(run_dir, tag) if s > step]
    if newer:
        warnings.warn(
            f"{run_dir} already has {tag} checkpoints past step {step} ({newer[0].name}): "
            "latest_checkpoint will keep picking them; resume into a fresh run folder",
            stacklevel=3,
        )


def _check_finite(model: torch.nn.Module, final: Path, kept: str) -> None:
    # Checked before writing: a checkpoint holding NaN would poison every run resumed from it,
    # and as the newest it is the one --resume picks.
    name = first_nonfinite(model, trained_only=True)
    if name is not None:
        kept = f"; {kept}" if kept else ""
        raise CheckpointError(
            final.parent,
            f"not writing checkpoint {final.name}: the weight {name!r} holds NaN or Inf{kept}; "
            "lower the learning rate, or find the samples that caused it (skipped.json)",
        )


def _check_arguments(tag: str, epoch, step, keep_last) -> None:
    if not TAG.fullmatch(tag):
        raise ValueError(f"tag={tag!r}: use lowercase letters, digits and _ (e.g. 'ckpt', 'best')")
    if not isinstance(step, int) or step < 0 or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch={epoch!r}, step={step!r}: both must be non-negative ints")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last={keep_last!r}: use an int >= 1, or None to keep all")


def _config_text(config: Mapping[str, Any] | None) -> str | None:
    if config is None:
        return None
    try:
        return json.dumps(config, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config is not JSON-safe ({err}); pass plain dicts/lists") from err


def _write_folder(final: Path, model, state: dict, config_text: str | None, split=None) -> None:
    """Build the checkpoint in a scratch folder, then rename it to `final` in one step.
    `split`: (the trained tensors, the meta.json entry of the frozen file holding the rest)."""
    tmp = final.parent / _ckpt_io.scratch_name("tmp", final.name)
    tmp.mkdir()
    try:
        if split is None:
            _ckpt_io.write_model(tmp / MODEL_FILE, model)
        else:
            _ckpt_io.write_tensors(tmp / MODEL_FILE, split[0])
        _ckpt_io.write_state(tmp / STATE_FILE, state)
        names = list(REQUIRED_FILES)
        if config_text is not None:
            _ckpt_io.write_bytes(tmp / CONFIG_FILE, config_text.encode())
            names.append(CONFIG_FILE)
        meta = {
            "format": FORMAT,
            "version": state["version"],
            "epoch": state["epoch"],
            "step": state["step"],
            "torch": torch.__version__,
            "files": {name: describe(tmp / name) for name in names},
        }
        if split is not None:
            meta["frozen"] = split[1]
        # Last, so a folder copied or synced by hand is complete iff meta.json is there.
        _ckpt_io.write_bytes(tmp / META_FILE, json.dumps(meta, indent=2).encode())
        _ckpt_io.fsync_dir(tmp)
        _ckpt_io.move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- load


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    generators: Mapping[str, Any] | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
) -> dict:
    """Load the checkpoint folder `path` into `model` (and `optimizer`, `scheduler`) in place.

    Verifies the sha256 of every file first (skip with `verify=False` if `latest_checkpoint`
    just did), reads state.pt with `torch.load(weights_only=True)` only, then restores the
    global RNGs and `generators` (by the names they were saved under) unless `restore_rng` is
    False. Returns {"epoch", "step", "best_metric", "extra", "config", "path"}.
    On a CheckpointError after reading began, rebuild the model: it may be partly loaded.
    """
    path = Path(path)
    meta = verify_checkpoint(path) if verify else read_meta(path)
    state_path = path / STATE_FILE
    state = _read_state(state_path, map_location)
    _load_weights(path, meta, model, map_location)
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is not None:
            _load_state_dict(target, name, state, state_path)
    if restore_rng:
        try:
            restore_rng_state(state["rng"], generators)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(state_path, f"cannot restore RNG state: {err}") from err
    return {
        "epoch": state["epoch"],
        "step": state["step"],
        "best_metric": state.get("best_metric"),
        "extra": state.get("extra", {}),
        "config": _read_config(path, meta),
        "path": path,
    }


def _read_state(state_path: Path, map_location) -> dict:
    try:
        state = torch.load(state_path, map_location=map_location, weights_only=True)
    except Exception as err:  # any failure to decode untrusted bytes is the file's fault
        raise CheckpointError(
            state_path,
            f"cannot be read with torch.load(weights_only=True) ({_unpickler_reason(err)}): "
            "it is damaged, not from mmfuse, or holds objects that would run code if "
            f"unpickled, so mmfuse refuses it; {TRY_OLDER}",
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(state_path, "is not an mmfuse checkpoint state file")
    return state


def _load_weights(path: Path, meta: dict, model: torch.nn.Module, map_location) -> None:
    device = map_location if isinstance(map_location, str) else str(map_location)
    model_path = path / MODEL_FILE
    try:
        if "frozen" in meta:
            tensors = _ckpt_frozen.read(path, meta["frozen"], device)
            tensors.update(load_file(model_path, device=device))
            model.load_state_dict(tensors, strict=True)
        else:
            load_model(model, model_path, strict=True, device=device)
    except CheckpointError:
        raise
    except Exception as err:
        what = ""
        if "frozen" in meta:
            what = f"together with the frozen tensors of {meta['frozen']['file']}, "
        raise CheckpointError(
            model_path,
            f"{what}cannot be loaded into {type(model).__name__} ({_one_line(err)}); build the "
            "model from this run's config, or the file is damaged",
        ) from err


def _load_state_dict(target, name: str, state: dict, state_path: Path) -> None:
    if state.get(name) is None:
        raise CheckpointError(state_path, f"holds no {name} state; pass {name}=None")
    try:
        target.load_state_dict(state[name])
    except Exception as err:
        raise CheckpointError(
            state_path,
            f"{name} state does not fit this {type(target).__name__} ({_one_line(err)}); "
            "build it as in the saving run (same parameters, same order)",
        ) from err


def _read_config(path: Path, meta: dict) -> dict | None:
    if CONFIG_FILE not in meta["files"]:
        return None
    try:
        return json.loads((path / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(path / CONFIG_FILE, f"unreadable ({err}); {TRY_OLDER}") from err


def _one_line(err: BaseException) -> str:
    # Messages such as load_state_dict's span lines; the CLI prints errors as one line.
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:400] + "..."


def _unpickler_reason(err: BaseException) -> str:
    # torch's own message suggests retrying with weights_only=False, which is exactly the
    # advice not to give for a file of unknown origin; keep only the concrete reason.
    match = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
    reason = match[1] if match else _one_line(err)
    reason = re.split(r"(?<=\.) Please use|\n", reason.strip())[0]
    return f"{type(err).__name__}: {reason}"
