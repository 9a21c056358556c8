"""Where a model runs and with how many threads: one place for every command and the service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mmfuse.errors import MmfuseError


def resolve_device(name: str) -> torch.device:
    """`auto` → CUDA when present, else CPU; a CUDA name where CUDA is absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MmfuseError(f"device={name!r} but CUDA is not available here; use --device cpu")
    return device


def set_threads(n: int | None) -> int:
    """Set torch's intra-op threads (None or 0 leaves them); returns the previous count."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    return previous


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run a block with `n` torch threads (None: as they are), restoring the count after."""
    previous = set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
