"""Frozen tensors written once per run folder instead of once per checkpoint.

A frozen pretrained encoder (the `medium` preset's EfficientNet, sound CNN and MiniLM) is most
of a model's bytes and nothing that training changes; written, hashed, synced and deleted
again at every epoch it cost several times the epoch itself on cached features. So a
checkpoint keeps in its own model.safetensors only what training may change, and names a
`frozen-<sha256>.safetensors` beside it in the run folder that holds the rest.

"Frozen" is decided per save: parameters that do not require gradients and buffers of modules
in eval mode. A frozen file is reused only if it holds exactly these names with the same bits
(compared against the file, not trusted from an earlier save), so a weight changed by any
means, or an encoder unfrozen after a warm-up, is written again. The file is named by its own
content's hash: the same tensors give the same file, and its name is its checksum.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from mmfuse.errors import CheckpointError
from mmfuse.train import _ckpt_io
from mmfuse.train._ckpt_format import FROZEN, frozen_file, sha256

# Below this the second file saves less than it costs (a tiny model writes one file as before).
MIN_BYTES = 8 << 20


def split(
    model: torch.nn.Module, min_bytes: int | None = MIN_BYTES
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trained, frozen) parts of `model.state_dict()`; frozen is empty when it would hold
    fewer than `min_bytes` (None: never split)."""
    state = model.state_dict()
    if min_bytes is None:
        return state, {}
    names = frozen_names(model) & state.keys()
    frozen = {name: state[name] for name in names}
    if _ckpt_io.tensor_bytes(frozen) < max(min_bytes, 1):
        return state, {}
    return {name: t for name, t in state.items() if name not in names}, frozen


def frozen_names(model: torch.nn.Module) -> set[str]:
    """State-dict names training leaves alone: parameters without gradient, and buffers of
    modules in eval mode (a batch norm there does not update its statistics)."""
    names = set()
    # Every path to a module shared under two names: the state dict holds both.
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            if not param.requires_grad:
                names.add(dot + name)
        if not module.training:
            names.update(dot + name for name, _ in module.named_buffers(recurse=False))
    return names


def store(run_dir: Path, frozen: dict[str, torch.Tensor]) -> dict:
    """The meta.json entry of a frozen file in `run_dir` holding `frozen`: one already there
    with the same names and bits, or a new one written durably."""
    for path in sorted(_frozen_files(run_dir), key=_mtime, reverse=True):
        if holds(path, frozen):
            return entry(path)
    tmp = run_dir / _ckpt_io.scratch_name("tmp", "frozen")
    try:
        _ckpt_io.write_tensors(tmp, frozen)
        final = run_dir / f"frozen-{sha256(tmp)}.safetensors"
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _ckpt_io.fsync_dir(run_dir)
    return entry(final)


def entry(path: Path) -> dict:
    return {"file": path.name, "bytes": path.stat().st_size}


def holds(path: Path, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether the file at `path` holds exactly `tensors` (names, dtypes, shapes, bits)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if set(f.keys()) != set(tensors):
                return False
            for name, tensor in tensors.items():
                saved = f.get_tensor(name)
                if saved.dtype != tensor.dtype or saved.shape != tensor.shape:
                    return False
                if not same_bits(saved.to(tensor.device), tensor):
                    return False
    except (OSError, SafetensorError):
        return False  # unreadable: a new file is written and this one is pruned
    return True


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, not by value: NaN equals itself and -0.0 differs from 0.0 (same dtype and
    shape assumed)."""
    return torch.equal(_bits(a), _bits(b))


# Integers of the element's width: torch.equal over bytes is several times slower.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(_BITS.get(flat.element_size(), torch.uint8))


def looks_complete(checkpoint: Path, meta_entry: dict) -> bool:
    file = checkpoint.parent / meta_entry["file"]
    return file.is_file() and file.stat().st_size == meta_entry["bytes"]


def read(checkpoint: Path, meta_entry: dict, device: str) -> dict[str, torch.Tensor]:
    file = frozen_file(checkpoint, meta_entry)
    try:
        return load_file(file, device=device)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(file, f"unreadable ({err}); the file is damaged") from err


def remove_unreferenced(run_dir: Path, referenced: set[str]) -> None:
    """Delete the frozen files no checkpoint names (superseded, or left by a killed save)."""
    for path in _frozen_files(run_dir):
        if path.name not in referenced:
            path.unlink(missing_ok=True)


def _frozen_files(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return [p for p in run_dir.iterdir() if FROZEN.fullmatch(p.name) and p.is_file()]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
