"""Durable writes for checkpoints: every file flushed and fsynced, folders built under a scratch
name and renamed into place, scratch folders of dead processes removed.

A directory rename is atomic on POSIX, so a folder renamed into place after its files and its
own entries are fsynced is either absent or complete, whenever the process is killed.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model

from mmfuse.errors import CheckpointError

# A full disk or an exhausted quota: the user can act on both, so neither is a traceback.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

# The tag pattern has no "-", so the host (which may) is unambiguous at the end.
# The step is absent from a frozen file's scratch name (`.tmp-frozen-<pid>-...`); a pid never
# has the 8 digits of a step, so the two cannot be confused.
_SCRATCH = re.compile(
    r"\.(?:tmp|trash)-[a-z][a-z0-9_]*(?:-\d{8,})?-(?P<pid>\d+)-[0-9a-f]+-(?P<host>[A-Za-z0-9_.-]*)"
)


def write_model(path: Path, model: torch.nn.Module) -> None:
    # save_model stores each tied/shared tensor once; load_model re-ties on the way back.
    save_model(model, str(path), metadata={"format": "pt"})
    fsync_file(path)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Part of a state dict, every name stored (a tensor sharing memory with one already
    taken is copied: safetensors stores no aliases, and loading copies into the model's own)."""
    taken, plain = set(), {}
    for name, tensor in tensors.items():
        key = (tensor.device, tensor.untyped_storage().data_ptr())
        plain[name] = (
            tensor.detach().clone(memory_format=torch.contiguous_format)
            if key in taken
            else tensor.detach().contiguous()
        )
        taken.add(key)
    save_file(plain, str(path), metadata={"format": "pt"})
    fsync_file(path)


def write_state(path: Path, state: dict) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    # Persists the directory entries (new names, renames); POSIX only, Windows has no dir fds.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete folder `tmp` to `final`, replacing a folder already there."""
    if final.exists():
        # Re-saving the same step: a directory rename cannot replace a non-empty directory,
        # so the old one steps aside first (a crash right here leaves it in .trash-, complete).
        trash = final.parent / scratch_name("trash", final.name)
        os.replace(final, trash)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(trash, final)
            raise
        fsync_dir(final.parent)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
        fsync_dir(final.parent)


def scratch_name(kind: str, name: str) -> str:
    """A dot-folder name (`.tmp-...` or `.trash-...`) that names its process and host."""
    return f".{kind}-{name}-{os.getpid()}-{secrets.token_hex(4)}-{_host()}"


def remove_abandoned_scratch(run_dir: Path) -> None:
    # Temp folders (and frozen files) of killed saves would otherwise pile up, each as large as
    # a checkpoint. Only those whose saving process, on this host, is gone: another may still
    # be writing.
    if os.name != "posix":
        return
    host = _host()
    for child in run_dir.iterdir():
        match = _SCRATCH.fullmatch(child.name)
        if not match or match["host"] != host:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def no_space_is_an_error(
    folder: Path, what: str, *, need: int | None = None, kept: str = ""
) -> Iterator[None]:
    """Turn a full disk while writing `what` into `folder` into one CheckpointError sentence
    (how much was needed, how much is free, what was kept and what to do)."""
    try:
        yield
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        raise CheckpointError(folder, _no_space(folder, what, need, kept)) from None


def _no_space(folder: Path, what: str, need: int | None, kept: str) -> str:
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    needs = f"it needs about {_size(need)}, {free}" if need else free
    kept = f"; {kept}" if kept else ""
    return (
        f"no space left on the device to write {what} ({needs}){kept}; free some space or "
        "train into another --out, then run again with --resume"
    )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def tensor_bytes(value) -> int:
    """Bytes of the tensors in a (nested) state: about what a checkpoint of it takes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0
