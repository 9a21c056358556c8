"""The checkpoint folder format: file names, meta.json, and the checks that decide whether a
folder is trusted (see `checkpoint.py` for the layout).

A folder is trusted only if meta.json exists and every file's size and sha256 match it, which
also catches bit rot and hand-copied partial folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import OrderedDict
from pathlib import Path

import torch

from mmfuse.errors import CheckpointError

FORMAT = "mmfuse-checkpoint"
# 2: meta.json may name a frozen file beside the folder (`_ckpt_frozen`); a checkpoint without
# one is still written as 1, which older versions read.
VERSION = 2
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
# The files a meta.json may list; anything else means a foreign or newer layout.
REQUIRED_FILES = (MODEL_FILE, STATE_FILE)
KNOWN_FILES = (MODEL_FILE, STATE_FILE, CONFIG_FILE)

# A run folder's frozen tensors, named by their sha256 (see `_ckpt_frozen`).
FROZEN = re.compile(r"frozen-(?P<sha256>[0-9a-f]{64})\.safetensors")

TAG = re.compile(r"[a-z][a-z0-9_]*")
FOLDER = re.compile(r"(?P<tag>[a-z][a-z0-9_]*)-(?P<step>\d{8,})")

TRY_OLDER = "load an older checkpoint, e.g. latest_checkpoint(run_dir) skips damaged ones"


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """Check that `path` is a complete mmfuse checkpoint and return its meta.json contents.

    Raises CheckpointError when meta.json is missing (an interrupted save), unreadable or
    foreign, or when a listed file is missing or its size or sha256 differs (damaged).
    """
    path = Path(path)
    meta = read_meta(path)
    for name, expected in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(file, f"missing; {TRY_OLDER}")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(
                file,
                f"is {size} bytes, meta.json says {expected['bytes']} (truncated?); {TRY_OLDER}",
            )
        if sha256(file) != expected["sha256"]:
            raise CheckpointError(file, f"sha256 does not match meta.json (damaged); {TRY_OLDER}")
    if "frozen" in meta:
        _verify_frozen(path, meta["frozen"])
    return meta


def frozen_file(path: Path, entry: dict) -> Path:
    """The frozen file that checkpoint `path`'s meta.json `entry` names; CheckpointError
    when it is not there."""
    file = path.parent / entry["file"]
    if not file.is_file():
        raise CheckpointError(
            file,
            f"missing: {path.name} keeps its frozen weights in this file beside it in the run "
            f"folder; copy the file with the checkpoint folder, or {TRY_OLDER}",
        )
    return file


def _verify_frozen(path: Path, entry: dict) -> None:
    file = frozen_file(path, entry)
    if file.stat().st_size != entry["bytes"]:
        raise CheckpointError(
            file, f"is {file.stat().st_size} bytes, meta.json says {entry['bytes']}; {TRY_OLDER}"
        )
    if sha256(file) != FROZEN.fullmatch(file.name)["sha256"]:
        raise CheckpointError(file, f"sha256 does not match its name (damaged); {TRY_OLDER}")


def read_meta(path: Path) -> dict:
    """meta.json of the checkpoint folder `path`, checked for format, version and fields only."""
    if not path.is_dir():
        raise CheckpointError(path, "is not a checkpoint folder; pass a <tag>-<step> folder")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        if any(FOLDER.fullmatch(child.name) for child in path.iterdir()):
            raise CheckpointError(
                path, "is a run folder; pass latest_checkpoint(run_dir) or a ckpt-* folder in it"
            )
        raise CheckpointError(
            meta_path, f"missing: the save did not finish or this is not a checkpoint; {TRY_OLDER}"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(meta_path, f"unreadable ({err}); {TRY_OLDER}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(meta_path, "is not an mmfuse checkpoint's meta.json")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CheckpointError(
            meta_path,
            f"format version {meta.get('version')!r}, this mmfuse reads up to {VERSION}: "
            "upgrade mmfuse",
        )
    if not _well_formed(meta):
        raise CheckpointError(meta_path, f"is malformed (unexpected fields); {TRY_OLDER}")
    return meta


def _well_formed(meta: dict) -> bool:
    files = meta.get("files")
    return (
        isinstance(files, dict)
        and set(REQUIRED_FILES) <= set(files) <= set(KNOWN_FILES)
        and all(
            isinstance(f, dict)
            and isinstance(f.get("bytes"), int)
            and isinstance(f.get("sha256"), str)
            for f in files.values()
        )
        and isinstance(meta.get("step"), int)
        and isinstance(meta.get("epoch"), int)
        and ("frozen" not in meta or _well_formed_frozen(meta["frozen"]))
    )


def _well_formed_frozen(entry) -> bool:
    # The name is checked by pattern, so meta.json cannot point outside the run folder.
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("file"), str)
        and FROZEN.fullmatch(entry["file"]) is not None
        and isinstance(entry.get("bytes"), int)
    )


def describe(path: Path) -> dict:
    """A file's entry in meta.json."""
    return {"sha256": sha256(path), "bytes": path.stat().st_size}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_weights_only(value, where: str) -> None:
    """Raise TypeError, naming the key, if `torch.load(weights_only=True)` could not read `value`.

    It fails before writing instead of producing a state.pt that would be refused at resume
    time. Exact types, because numpy scalars subclass float/int yet pickle as numpy objects.
    """
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"{where} is a {type(value).__name__}; save a plain tensor instead")
        return
    if value is None or type(value) in _PRIMITIVES:
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            check_weights_only(item, f"{where}[{i}]")
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if not (key is None or type(key) in _PRIMITIVES):
                raise TypeError(f"{where} has a {type(key).__name__} key; use str or int keys")
            check_weights_only(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which torch.load(weights_only=True) cannot read "
        "back; convert it to tensors, Python numbers, strings, lists or dicts"
    )


_PRIMITIVES = (bool, int, float, str, bytes, torch.dtype, torch.device, torch.Size)
