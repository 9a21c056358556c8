"""A numeric or categorical cell → the 1-element float tensor its encoder takes.

Numbers are standardised with the training split's mean and standard deviation, which the
encoder's spec carries (so a saved model standardises as it was trained, whatever data it sees
later). A category becomes its index among the training split's categories, plus one; a
category the training split lacks is 0, the encoder's "unknown" row. Indices travel as float32
so that every non-text input of a batch (and of an ONNX graph) is one float tensor.
"""

from __future__ import annotations

import math

import torch

from mmfuse.data.tabular import category_text
from mmfuse.errors import MmfuseError
from mmfuse.features.spec import CategoricalSpec, NumericSpec

UNKNOWN = 0


class CellError(MmfuseError, ValueError):
    """A numeric cell (or form value) that is not a finite number, naming its input."""

    def __init__(self, input_name: str, message: str):
        super().__init__(f"input {input_name!r}: {message}")
        self.input = input_name
        self.message = message


class NumberTransform:
    def __init__(self, spec: NumericSpec):
        self.mean = float(spec.mean)
        self.std = float(spec.std) if spec.std else 1.0

    def __call__(self, value) -> torch.Tensor:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{value!r} is not a number; fix the cell or leave it empty (a missing input)"
            ) from None
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number; fix the cell or leave it empty")
        return torch.tensor([(number - self.mean) / self.std], dtype=torch.float32)


class CategoryTransform:
    def __init__(self, spec: CategoricalSpec):
        self.index = {c: k + 1 for k, c in enumerate(spec.categories)}

    def __call__(self, value) -> torch.Tensor:
        return torch.tensor([float(self.index.get(category_text(value), UNKNOWN))])


def tabular_transform(spec):
    """The transform of a numeric or categorical input's spec."""
    return NumberTransform(spec) if isinstance(spec, NumericSpec) else CategoryTransform(spec)
