"""Random draws for transforms: one row of parameters per sample, reproducible from a Generator.

Draws happen on the generator's device (CPU when none is given and the data is on CPU) and are
then moved to the data, so one seeded CPU generator gives the same parameters for CPU and CUDA
data.

Instead of a `torch.Generator`, the transforms' draws can come from `RowStreams`: a stream of
uniforms per sample keyed by `(key, row)`, so a whole batch's parameters are drawn in one call
and each row's are the same whether its sample is staged alone or in any batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic): a bijection that scatters bits."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


class RowStreams:
    """Counter-based uniform draws, one stream per row of a batch.

    Draw `c` (the c-th `uniform` call) of row `r` is a hash of `(key, r, c, index)`: a row's
    numbers depend on nothing but the key, its row number and how many draws came before, so
    the transforms' batched parameter draws (`n×…`, one row per sample) give each sample the
    same parameters in any batch. `key` is a 63-bit integer (say, from the seed, epoch and input).
    """

    def __init__(self, key: int, rows, calls: int = 0):
        self.key = int(key)
        self.rows = np.asarray(rows, dtype=np.uint64).reshape(-1)
        self.calls = calls

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, i: int) -> RowStreams:
        """Row `i`'s stream alone, at the same point of its draws."""
        return RowStreams(self.key, self.rows[i : i + 1], self.calls)

    def uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Float64 uniforms in [0, 1) of `shape`, whose first dimension is the rows."""
        return torch.from_numpy(self.uniform_array(shape))

    def uniform_array(self, shape: tuple[int, ...]) -> np.ndarray:
        """`uniform` as a numpy array."""
        if not shape or shape[0] != len(self.rows):
            raise ValueError(f"RowStreams of {len(self.rows)} rows asked for a draw of {shape}")
        per_row = math.prod(shape[1:])
        with np.errstate(over="ignore"):
            start = _mix(_mix(np.uint64(self.key) ^ (self.rows * _GOLDEN)) + np.uint64(self.calls))
            counters = start[:, None] + np.arange(1, per_row + 1, dtype=np.uint64) * _GOLDEN
            bits = _mix(counters)
        self.calls += 1
        return ((bits >> _S11).astype(np.float64) * 2.0**-53).reshape(shape)


Source = torch.Generator | RowStreams | None


def rand(shape: tuple[int, ...], generator: Source, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float64 of `shape`, drawn from `generator`, returned on `device`."""
    if isinstance(generator, RowStreams):
        return generator.uniform(tuple(shape)).to(device)
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=source).to(device)


def rand_array(shape: tuple[int, ...], generator: Source) -> np.ndarray:
    """`rand` as a float64 numpy array: the same numbers from the same source. A batch's draws
    are a few dozen numbers, and torch's cost per call on such tiny tensors was most of a
    random crop's parameters (numpy's is a tenth of it)."""
    if isinstance(generator, RowStreams):
        return generator.uniform_array(tuple(shape))
    return rand(shape, generator, torch.device("cpu")).numpy()


def randint_below(high: torch.Tensor, generator: Source) -> torch.Tensor:
    """Integers uniform in [0, high) elementwise (high >= 1, any shape): a per-sample `randint`."""
    u = rand(tuple(high.shape), generator, high.device)
    return (u * high).long().clamp(max=high - 1)


def randint_below_array(high: np.ndarray, generator: Source) -> np.ndarray:
    """`randint_below` on numpy arrays, from `rand_array`: the same integers."""
    u = rand_array(high.shape, generator)
    return np.minimum((u * high).astype(np.int64), high - 1)
