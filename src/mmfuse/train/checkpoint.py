"""Crash-safe training checkpoints: a SIGKILL at any instant leaves the previous one usable.

Layout of a run folder::

    run_dir/
        ckpt-00000200/            one checkpoint per save, named <tag>-<step:08d>
            model.safetensors     weights (tied tensors stored once, see `safetensors.torch.save_model`)
            state.pt              everything else, readable by `torch.load(weights_only=True)`
            config.json           optional run config (JSON), as passed to `save_checkpoint`
            meta.json             format version, epoch, step, sha256 + size of the files above
        best-00000150/            `mark_best` hard-links the files of the best checkpoint here
        .tmp-ckpt-00000300-...    a save in progress or killed mid-way: always ignored

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
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import shutil
import socket
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from mmfuse.errors import CheckpointError

FORMAT = "mmfuse-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
# The files a meta.json may list; anything else means a foreign or newer layout.
_REQUIRED_FILES = (MODEL_FILE, STATE_FILE)
_KNOWN_FILES = (MODEL_FILE, STATE_FILE, CONFIG_FILE)

_TAG = re.compile(r"[a-z][a-z0-9_]*")
_FOLDER = re.compile(r"(?P<tag>[a-z][a-z0-9_]*)-(?P<step>\d{8,})")
# The tag pattern has no "-", so the host (which may) is unambiguous at the end.
_SCRATCH = re.compile(
    r"\.(?:tmp|trash)-[a-z][a-z0-9_]*-\d{8,}-(?P<pid>\d+)-[0-9a-f]+-(?P<host>[A-Za-z0-9_.-]*)"
)


# --------------------------------------------------------------------------- RNG state


def capture_rng_state(generators: Mapping[str, Any] | None = None) -> dict:
    """Every RNG a training step may draw from, as tensors/lists/dicts (weights_only-safe).

    Global: torch CPU, every CUDA device (when CUDA is available), numpy's legacy global
    `np.random` state and Python's `random`. `generators` adds named explicit generators
    (`torch.Generator` or `np.random.Generator`), e.g. the sampler's data-order generator.
    """
    legacy = np.random.get_state()
    # random.getstate() is (version, 625 ints < 2**32, gauss_next): lists pickle weights-only.
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "algorithm": legacy[0],
            # uint32 has no torch dtype; int64 holds it exactly.
            "keys": torch.from_numpy(legacy[1].astype(np.int64)),
            "pos": int(legacy[2]),
            "has_gauss": int(legacy[3]),
            "cached_gaussian": float(legacy[4]),
        },
        "python": [py_version, list(py_internal), py_gauss],
        "generators": {},
    }
    for name, gen in (generators or {}).items():
        if isinstance(gen, torch.Generator):
            entry = {"kind": "torch", "device": str(gen.device), "state": gen.get_state()}
        elif isinstance(gen, np.random.Generator):
            entry = {"kind": "numpy", "state": _numpy_to_safe(gen.bit_generator.state)}
        else:
            raise TypeError(
                f"generators[{name!r}] is a {type(gen).__name__}; pass a torch.Generator "
                "or a numpy.random.Generator"
            )
        state["generators"][str(name)] = entry
    return state


def restore_rng_state(state: Mapping, generators: Mapping[str, Any] | None = None) -> None:
    """Put back what `capture_rng_state` returned; `generators` are set in place by name.

    CUDA states are restored when CUDA is available here (a CPU-only resume of a GPU run
    warns, since its CUDA draws cannot be replayed). A name in `generators` missing from
    `state` raises KeyError: silently leaving it unseeded would change the data order.
    """
    # .cpu(): load_checkpoint(map_location="cuda") moves these too, but RNG setters want CPU.
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = list(state.get("cuda", []))
    if cuda_states and torch.cuda.is_available():
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
    elif cuda_states:
        warnings.warn(
            "the checkpoint holds CUDA RNG states but CUDA is not available: not restored",
            stacklevel=2,
        )
    legacy = state["numpy"]
    np.random.set_state(
        (
            legacy["algorithm"],
            legacy["keys"].cpu().numpy().astype(np.uint32),
            legacy["pos"],
            legacy["has_gauss"],
            legacy["cached_gaussian"],
        )
    )
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise KeyError(
                f"no state for generator {name!r}; the checkpoint has {sorted(saved) or 'none'}"
            )
        entry = saved[name]
        if isinstance(gen, torch.Generator) and entry["kind"] == "torch":
            gen.set_state(entry["state"].cpu())
        elif isinstance(gen, np.random.Generator) and entry["kind"] == "numpy":
            gen.bit_generator.state = _numpy_from_safe(entry["state"])
        else:
            raise TypeError(
                f"generator {name!r} is a {type(gen).__name__} but was saved as a "
                f"{entry['kind']} generator"
            )


def _numpy_to_safe(value):
    # Bit-generator states nest dicts, big ints and uint64 arrays; arrays become tagged lists.
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, dict):
        return {key: _numpy_to_safe(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _numpy_from_safe(value):
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    if isinstance(value, dict):
        return {key: _numpy_from_safe(item) for key, item in value.items()}
    return value


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
) -> Path:
    """Write `run_dir/<tag>-<step:08d>/` atomically and return its path.

    `extra` holds any further resumable state and may contain only tensors, numbers, strings,
    None, lists, tuples and dicts (checked up front, so a bad value fails before any write).
    `config` (JSON-safe) is stored as config.json. `generators` are named data-order RNGs saved
    with the global ones. Afterwards only the newest `keep_last` complete `<tag>-*` checkpoints
    are kept (None keeps all); the one just written is never pruned.
    """
    run_dir = Path(run_dir)
    if not _TAG.fullmatch(tag):
        raise ValueError(f"tag={tag!r}: use lowercase letters, digits and _ (e.g. 'ckpt', 'best')")
    if not isinstance(step, int) or step < 0 or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch={epoch!r}, step={step!r}: both must be non-negative ints")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last={keep_last!r}: use an int >= 1, or None to keep all")

    state = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "step": step,
        "best_metric": None if best_metric is None else float(best_metric),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": capture_rng_state(generators),
        "extra": dict(extra or {}),
    }
    _check_weights_only(state, "state")
    config_text = None
    if config is not None:
        try:
            config_text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"config is not JSON-safe ({err}); pass plain dicts/lists") from err

    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"{tag}-{step:08d}"
    newer = [p for s, p in _checkpoints(run_dir, tag) if s > step]
    if newer:
        warnings.warn(
            f"{run_dir} already has {tag} checkpoints past step {step} ({newer[0].name}): "
            "latest_checkpoint will keep picking them; resume into a fresh run folder",
            stacklevel=2,
        )

    tmp = run_dir / _scratch_name("tmp", final.name)
    tmp.mkdir()
    try:
        _write_model(tmp / MODEL_FILE, model)
        _write_state(tmp / STATE_FILE, state)
        names = list(_REQUIRED_FILES)
        if config_text is not None:
            _write_bytes(tmp / CONFIG_FILE, config_text.encode())
            names.append(CONFIG_FILE)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "epoch": epoch,
            "step": step,
            "torch": torch.__version__,
            "files": {name: _describe(tmp / name) for name in names},
        }
        # Last, so a folder copied or synced by hand is complete iff meta.json is there.
        _write_bytes(tmp / META_FILE, json.dumps(meta, indent=2).encode())
        _fsync_dir(tmp)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        _prune(run_dir, tag, keep_last, final)
    return final


def mark_best(checkpoint: str | os.PathLike, *, tag: str = "best", verify: bool = True) -> Path:
    """Make `checkpoint` the run's best: hard-link its files into `<tag>-<step>/` beside it.

    Hard links cost no space or copy time and survive the pruning of the original (the
    files are never modified in place); where links are not supported the files are copied.
    Only the newest `<tag>-*` folder is kept. Returns the new folder. `verify=False` skips
    rehashing the files, for a checkpoint this process has just written.
    """
    if not _TAG.fullmatch(tag):
        raise ValueError(f"tag={tag!r}: use lowercase letters, digits and _ (e.g. 'best')")
    source = Path(checkpoint)
    meta = verify_checkpoint(source) if verify else _read_meta(source)
    run_dir = source.parent
    final = run_dir / f"{tag}-{meta['step']:08d}"
    if final.resolve() == source.resolve():
        return final
    tmp = run_dir / _scratch_name("tmp", final.name)
    tmp.mkdir()
    try:
        for name in [*meta["files"], META_FILE]:  # meta.json last, as in save_checkpoint
            try:
                os.link(source / name, tmp / name)
            except OSError:
                shutil.copy2(source / name, tmp / name)
                _fsync_file(tmp / name)
        _fsync_dir(tmp)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(run_dir, tag, 1, final)
    return final


def _write_model(path: Path, model: torch.nn.Module) -> None:
    # save_model stores each tied/shared tensor once; load_model re-ties on the way back.
    save_model(model, str(path), metadata={"format": "pt"})
    _fsync_file(path)


def _write_state(path: Path, state: dict) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Persists the directory entries (new names, renames); POSIX only, Windows has no dir fds.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(tmp: Path, final: Path) -> None:
    if final.exists():
        # Re-saving the same step: a directory rename cannot replace a non-empty directory,
        # so the old one steps aside first (a crash right here leaves it in .trash-, complete).
        trash = final.parent / _scratch_name("trash", final.name)
        os.replace(final, trash)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(trash, final)
            raise
        _fsync_dir(final.parent)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
        _fsync_dir(final.parent)


def _scratch_name(kind: str, name: str) -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
    return f".{kind}-{name}-{os.getpid()}-{secrets.token_hex(4)}-{host}"


def _check_weights_only(value, where: str) -> None:
    # Fails before writing, naming the offending key, instead of producing a state.pt that
    # torch.load(weights_only=True) would refuse at resume time. Exact types, because numpy
    # scalars subclass float/int yet pickle as numpy objects.
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"{where} is a {type(value).__name__}; save a plain tensor instead")
        return
    if value is None or type(value) in _PRIMITIVES:
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_weights_only(item, f"{where}[{i}]")
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if not (key is None or type(key) in _PRIMITIVES):
                raise TypeError(f"{where} has a {type(key).__name__} key; use str or int keys")
            _check_weights_only(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which torch.load(weights_only=True) cannot read "
        "back; convert it to tensors, Python numbers, strings, lists or dicts"
    )


_PRIMITIVES = (bool, int, float, str, bytes, torch.dtype, torch.device, torch.Size)


# --------------------------------------------------------------------------- find, verify


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """Check that `path` is a complete mmfuse checkpoint and return its meta.json contents.

    Raises CheckpointError when meta.json is missing (an interrupted save), unreadable or
    foreign, or when a listed file is missing or its size or sha256 differs (damaged).
    """
    path = Path(path)
    meta = _read_meta(path)
    for name, expected in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(file, f"missing; {_OLDER}")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(
                file, f"is {size} bytes, meta.json says {expected['bytes']} (truncated?); {_OLDER}"
            )
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(file, f"sha256 does not match meta.json (damaged); {_OLDER}")
    return meta


_OLDER = "load an older checkpoint, e.g. latest_checkpoint(run_dir) skips damaged ones"


def latest_checkpoint(
    run_dir: str | os.PathLike, tag: str = "ckpt", *, verify: bool = True
) -> Path | None:
    """The highest-step complete `<tag>-*` checkpoint in `run_dir`, or None if there is none.

    Temp and trash folders are ignored; so are folders without meta.json and, with `verify`,
    those whose files do not match their hashes (the next older one is returned instead).
    """
    for _, path in _checkpoints(Path(run_dir), tag):
        try:
            if verify:
                verify_checkpoint(path)
            else:
                _read_meta(path)
        except CheckpointError:
            continue
        return path
    return None


def best_checkpoint(run_dir: str | os.PathLike, *, verify: bool = True) -> Path | None:
    """The checkpoint last passed to `mark_best` (or saved with tag="best"), or None."""
    return latest_checkpoint(run_dir, "best", verify=verify)


def _checkpoints(run_dir: Path, tag: str) -> list[tuple[int, Path]]:
    # Highest step first; only exact `<tag>-<digits>` names, so dot-folders never match.
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = _FOLDER.fullmatch(child.name)
        if match and match["tag"] == tag and child.is_dir():
            found.append((int(match["step"]), child))
    return sorted(found, key=lambda item: item[0], reverse=True)


def _read_meta(path: Path) -> dict:
    if not path.is_dir():
        raise CheckpointError(path, "is not a checkpoint folder; pass a <tag>-<step> folder")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        if any(_FOLDER.fullmatch(child.name) for child in path.iterdir()):
            raise CheckpointError(
                path, "is a run folder; pass latest_checkpoint(run_dir) or a ckpt-* folder in it"
            )
        raise CheckpointError(
            meta_path, f"missing: the save did not finish or this is not a checkpoint; {_OLDER}"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(meta_path, f"unreadable ({err}); {_OLDER}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(meta_path, "is not an mmfuse checkpoint's meta.json")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CheckpointError(
            meta_path,
            f"format version {meta.get('version')!r}, this mmfuse reads up to {VERSION}: "
            "upgrade mmfuse",
        )
    files = meta.get("files")
    if (
        not isinstance(files, dict)
        or not set(_REQUIRED_FILES) <= set(files) <= set(_KNOWN_FILES)
        or not all(
            isinstance(f, dict)
            and isinstance(f.get("bytes"), int)
            and isinstance(f.get("sha256"), str)
            for f in files.values()
        )
        or not isinstance(meta.get("step"), int)
        or not isinstance(meta.get("epoch"), int)
    ):
        raise CheckpointError(meta_path, f"is malformed (unexpected fields); {_OLDER}")
    return meta


def _describe(path: Path) -> dict:
    return {"sha256": _sha256(path), "bytes": path.stat().st_size}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- prune


def _prune(run_dir: Path, tag: str, keep: int, newest: Path) -> None:
    kept = 1  # `newest`, known good: it was just written
    for _, path in _checkpoints(run_dir, tag):
        if path == newest:
            continue
        if kept < keep and _looks_complete(path):
            kept += 1
            continue
        # Renamed first so a crash mid-delete leaves an ignored dot-folder, not a half ckpt.
        trash = run_dir / _scratch_name("trash", path.name)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    _fsync_dir(run_dir)
    _remove_abandoned_scratch(run_dir)


def _looks_complete(path: Path) -> bool:
    # Sizes only: hashing every kept checkpoint on every save would re-read gigabytes.
    try:
        meta = _read_meta(path)
    except CheckpointError:
        return False
    return all(
        (path / name).is_file() and (path / name).stat().st_size == info["bytes"]
        for name, info in meta["files"].items()
    )


def _remove_abandoned_scratch(run_dir: Path) -> None:
    # Temp folders of killed saves would otherwise pile up, each as large as a checkpoint.
    # Only those whose saving process, on this host, is gone: another may still be writing.
    if os.name != "posix":
        return
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
    for child in run_dir.iterdir():
        match = _SCRATCH.fullmatch(child.name)
        if not match or match["host"] != host or not child.is_dir():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        shutil.rmtree(child, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    meta = verify_checkpoint(path) if verify else _read_meta(path)
    state_path = path / STATE_FILE
    try:
        state = torch.load(state_path, map_location=map_location, weights_only=True)
    except Exception as err:  # any failure to decode untrusted bytes is the file's fault
        raise CheckpointError(
            state_path,
            f"cannot be read with torch.load(weights_only=True) ({_unpickler_reason(err)}): "
            "it is damaged, not from mmfuse, or holds objects that would run code if "
            f"unpickled, so mmfuse refuses it; {_OLDER}",
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(state_path, "is not an mmfuse checkpoint state file")

    model_path = path / MODEL_FILE
    device = map_location if isinstance(map_location, str) else str(map_location)
    try:
        load_model(model, model_path, strict=True, device=device)
    except Exception as err:
        raise CheckpointError(
            model_path,
            f"cannot be loaded into {type(model).__name__} ({_one_line(err)}); build the "
            "model from this run's config, or the file is damaged",
        ) from err

    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is None:
            continue
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

    if restore_rng:
        try:
            restore_rng_state(state["rng"], generators)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(state_path, f"cannot restore RNG state: {err}") from err

    config = None
    if CONFIG_FILE in meta["files"]:
        try:
            config = json.loads((path / CONFIG_FILE).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise CheckpointError(path / CONFIG_FILE, f"unreadable ({err}); {_OLDER}") from err
    return {
        "epoch": state["epoch"],
        "step": state["step"],
        "best_metric": state.get("best_metric"),
        "extra": state.get("extra", {}),
        "config": config,
        "path": path,
    }


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
