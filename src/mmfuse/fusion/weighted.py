"""Weighted-sum fusion: a convex combination of per-modality projections into the output space."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from mmfuse.fusion.base import Fusion, masked_softmax, register, stack_projections


@register("weighted")
class WeightedSumFusion(Fusion):
    """`out_b = Σ_m w_bm (W_m x_m + b_m)` with `w_b = softmax(logits)` over b's present modalities.

    One learned logit per modality (not per sample); renormalising over the present ones keeps
    the output on the same scale whatever subset is present, which a plain sum would not.
    """

    has_weights = True
    learn_weights: ClassVar[bool] = True

    def __init__(self, input_dims: Mapping[str, int], output_dim: int):
        super().__init__(input_dims, output_dim)
        self.projections = nn.ModuleDict(
            {m: nn.Linear(d, output_dim) for m, d in self.input_dims.items()}
        )
        logits = torch.zeros(self.num_modalities)  # M; zeros = equal weights
        if self.learn_weights:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits, persistent=False)

    @property
    def weights(self) -> Tensor:
        """The learned modality weights (M, in `self.modalities` order) when all are present."""
        return torch.softmax(self.logits.detach(), dim=0)

    def config(self) -> dict:
        return {}

    def fuse(self, xs: list[Tensor], mask: Tensor) -> tuple[Tensor, Tensor]:
        h = stack_projections(self.projections, self.modalities, xs)  # B×M×D
        w = masked_softmax(self.logits.to(h.dtype).expand_as(mask), mask)  # B×M
        # The projection of a missing slot is a bias, not garbage, but exclude it explicitly.
        h = torch.where(mask[:, :, None], h, 0.0)
        return torch.einsum("bm,bmd->bd", w, h), w


@register("sum")
class SumFusion(WeightedSumFusion):
    """The mean of the present modalities' projections: `weighted` with the weights frozen equal.

    A true sum would grow with the number of present modalities, so a sample missing one would
    land elsewhere in feature space; the mean is the sum renormalised over present modalities.
    """

    learn_weights = False
