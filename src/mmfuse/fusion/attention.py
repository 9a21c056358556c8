"""Attention fusion: a learned query attends over the modalities; weights differ per sample."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfuse.fusion.base import Fusion, masked_softmax, register, stack_projections


@register("attention")
class AttentionFusion(Fusion):
    """`out = Σ_m α_m v_m`, `v_m = W_m x_m + b_m`, `α = softmax_m(q · tanh(K v_m) / √D)`.

    Additive-style attention pooling over modalities with one learned query `q`. Unlike
    `weighted`, the weights depend on the sample: a noisy or uninformative modality can be
    down-weighted where it is uninformative. Missing modalities get weight exactly 0.
    """

    has_weights = True

    def __init__(self, input_dims: Mapping[str, int], output_dim: int):
        super().__init__(input_dims, output_dim)
        self.values = nn.ModuleDict(
            {m: nn.Linear(d, output_dim) for m, d in self.input_dims.items()}
        )
        self.key = nn.Linear(output_dim, output_dim)
        # Small, so attention starts near uniform (the `sum` baseline) yet keys get a gradient.
        self.query = nn.Parameter(torch.randn(output_dim) * 0.02)

    def config(self) -> dict:
        return {}

    def fuse(self, xs: list[Tensor], mask: Tensor) -> tuple[Tensor, Tensor]:
        v = stack_projections(self.values, self.modalities, xs)  # B×M×D
        k = torch.tanh(self.key(v))  # B×M×D
        scores = (k @ self.query) / math.sqrt(self.output_dim)  # B×M
        alpha = masked_softmax(scores, mask)  # B×M
        v = torch.where(mask[:, :, None], v, 0.0)
        return torch.einsum("bm,bmd->bd", alpha, v), alpha
