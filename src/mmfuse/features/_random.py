"""Random draws for transforms: one row of parameters per sample, reproducible from a Generator.

Draws happen on the generator's device (CPU when none is given and the data is on CPU) and are
then moved to the data, so one seeded CPU generator gives the same parameters for CPU and CUDA
data.
"""

from __future__ import annotations

import torch


def rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Uniform [0, 1) float64 of `shape`, drawn from `generator`, returned on `device`."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=source).to(device)


def randint_below(high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Integers uniform in [0, high) elementwise (high >= 1, any shape): a per-sample `randint`."""
    u = rand(tuple(high.shape), generator, high.device)
    return (u * high).long().clamp(max=high - 1)
