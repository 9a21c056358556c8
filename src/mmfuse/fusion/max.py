"""Max fusion: element-wise maximum over the present modalities' projections."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfuse.fusion.base import Fusion, register, stack_projections


@register("max")
class MaxFusion(Fusion):
    """`out_b[d] = max_{m present in b} (W_m x_m + b_m)[d]`.

    Each output feature is taken from whichever modality responds most strongly, so a modality
    can dominate some features and be ignored on others; gradients reach only the winner of each
    feature. Missing modalities are set to -inf before the max, so they never win.
    """

    def __init__(self, input_dims: Mapping[str, int], output_dim: int):
        super().__init__(input_dims, output_dim)
        self.projections = nn.ModuleDict(
            {m: nn.Linear(d, output_dim) for m, d in self.input_dims.items()}
        )

    def config(self) -> dict:
        return {}

    def fuse(self, xs: list[Tensor], mask: Tensor) -> tuple[Tensor, None]:
        h = stack_projections(self.projections, self.modalities, xs)  # B×M×D
        h = torch.where(mask[:, :, None], h, -math.inf)
        return h.amax(dim=1), None  # B×D
