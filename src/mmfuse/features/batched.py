"""The batched front end: the last steps of preprocessing, run once per batch on its device.

A training loader would otherwise finish every sample on its own in the data workers: a log-mel
per clip, a float conversion and a normalisation per picture. Instead the loader stops at a
`Staged` value (a waveform cut to the clip length, uint8 pixels already cropped), together with
the random parameters of the steps left (SpecAugment masks, flip, colour jitter), drawn from the
sample's own generator where the per-sample path draws them. `collate` stacks staged values and
`FrontEnd` finishes a whole batch in one call per input, after it has moved to the training
device: uint8 pixels cross to a GPU in a quarter of the bytes of float ones, and a batch of
spectrograms is one FFT and one matmul.

The steps themselves are the transforms' own (`AudioTransform.finish`, `Pipeline.finish`,
`VideoTransform.finish`); the per-sample path (`SampleLoader.finish`) runs the same code on a
batch of one, so both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Staged:
    """Inputs loaded up to the front end: `data` has one row per sample (audio `n×L` float,
    images `n×1×C×H×W` and clips `n×F×C×H×W` uint8) and every value of `params` `n` rows: the
    random draws of the steps still to run."""

    data: Tensor
    params: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.data.shape[0]

    @staticmethod
    def cat(items: Sequence[Staged]) -> Staged:
        """One batch from several: rows of `data` and of each parameter, in order. Rows of one
        batch (`row`) are taken from it in one step, and all of its rows in order are it."""
        first = items[0]
        if isinstance(first, StagedRow) and all(
            isinstance(s, StagedRow) and s.batch is first.batch for s in items
        ):
            return first.batch.take([s.index for s in items])
        keys = first.params.keys()
        return Staged(
            torch.cat([s.data for s in items]),
            {k: torch.cat([s.params[k] for s in items]) for k in keys},
        )

    def take(self, rows: list[int]) -> Staged:
        """These rows, in this order (the batch itself when that is all of them in order)."""
        if rows == list(range(len(self))):
            return self
        index = torch.tensor(rows, dtype=torch.long)
        return Staged(self.data[index], {k: v[index] for k, v in self.params.items()})

    def row(self, i: int) -> Staged:
        """Row `i` alone: views into this batch's tensors, cut when read. A dataset stages a
        batch at once and hands out its rows, which the collate joins again: slicing each row's
        tensors there and concatenating them here cost about 30 µs a picture."""
        return StagedRow(self, i)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Staged:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Staged(move(self.data), {k: move(v) for k, v in self.params.items()})

    def pin_memory(self) -> Staged:
        """Page-locked copies, so that the move to a GPU can overlap (DataLoader's pin thread
        calls this)."""
        return Staged(self.data.pin_memory(), {k: v.pin_memory() for k, v in self.params.items()})


class StagedRow(Staged):
    """Row `index` of the staged `batch` (`Staged.row`); `data` and `params` are its views."""

    def __init__(self, batch: Staged, index: int):  # not the dataclass's: no tensors are cut
        self.batch, self.index = batch, index

    @property
    def data(self) -> Tensor:
        return self.batch.data[self.index : self.index + 1]

    @property
    def params(self) -> dict[str, Tensor]:
        return {k: v[self.index : self.index + 1] for k, v in self.batch.params.items()}

    def __len__(self) -> int:
        return 1


Finish = Callable[[str, Staged], Tensor]


class FrontEnd:
    """Finishes the staged inputs of collated batches, on whatever device they are on.

    `finish(name, staged)` is the loader's (`SampleLoader.finish_batch`); `placeholders[name]`
    is what an absent input looks like once finished, put back in the rows the mask marks absent
    so a batch holds the same tensors as one collated from finished samples.
    """

    def __init__(self, finish: Finish, placeholders: Mapping[str, object]):
        self._finish = finish
        self.placeholders = dict(placeholders)

    def to_device(self, inputs: Mapping[str, object], device: torch.device | str) -> dict:
        """`inputs` with every staged value moved to `device` (the rest as they are)."""
        return {
            n: v.to(device, non_blocking=True) if isinstance(v, Staged) else v
            for n, v in inputs.items()
        }

    @torch.no_grad()
    def finish(self, inputs: Mapping[str, object], mask: Tensor) -> dict:
        """`inputs` (a collated batch's, sorted by name as the mask's columns) with every staged
        value finished on its device; absent rows hold the placeholder."""
        out = dict(inputs)
        for j, name in enumerate(sorted(inputs)):
            value = inputs[name]
            if not isinstance(value, Staged):
                continue
            x = self._finish(name, value)
            present = mask[:, j].to(x.device)
            if not bool(present.all()):
                fill = torch.as_tensor(self.placeholders[name]).to(x.device, x.dtype)
                x = torch.where(present.view(-1, *[1] * (x.ndim - 1)), x, fill)
            out[name] = x
        return out

    def __call__(
        self, inputs: Mapping[str, object], mask: Tensor, device: torch.device | str
    ) -> dict:
        """`to_device`, then `finish`."""
        return self.finish(self.to_device(inputs, device), mask)
