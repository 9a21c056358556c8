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


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` runs bf16 matrix maths natively: a CUDA GPU that says so, or a CPU
    with AVX512-BF16 or AMX (oneDNN's own check); elsewhere bf16 is emulated and slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


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
