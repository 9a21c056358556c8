"""Low-rank multimodal fusion (Liu et al. 2018, "Efficient Low-rank Multimodal Fusion ...")."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfuse.fusion.base import Fusion, check_positive_int, per_modality_dims, register
from mmfuse.fusion.tensor import append_one, modality_projections


@register("lowrank")
class LowRankFusion(Fusion):
    """`out = Σ_{i=1..r} Π_m (z_m W_m^(i)) + b` with the same `z_m = [h_m, 1]` as `tensor`.

    Tensor fusion's weight W (D × Π(P_m+1)) restricted to rank r: W = Σ_i ⊗_m W_m^(i), so the
    product tensor is never formed. Cost is linear in M: r · D · Σ_m (P_m + 1) weights.
    `factors[j]` is modality j's factor, shaped r × (P_m+1) × D.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        output_dim: int,
        proj_dim: int | Mapping[str, int] = 32,
        rank: int = 4,
    ):
        super().__init__(input_dims, output_dim)
        self.proj_dim = dict(proj_dim) if isinstance(proj_dim, Mapping) else proj_dim
        self.proj_dims = per_modality_dims("proj_dim", proj_dim, self.modalities)
        self.rank = check_positive_int("rank", rank)
        self.projections = modality_projections(self.input_dims, self.proj_dims)
        self.factors = nn.ParameterList(
            [nn.Parameter(torch.empty(rank, p + 1, output_dim)) for p in self.proj_dims]
        )
        self.bias = nn.Parameter(torch.zeros(output_dim))
        self.reset_factors()

    def reset_factors(self) -> None:
        # A product of M factors multiplies their scales: pick each factor's std so that the
        # rank-sum has roughly unit variance for unit-variance inputs, whatever M and r are.
        for factor, p in zip(self.factors, self.proj_dims):
            std = (1.0 / (p + 1)) ** 0.5 * self.rank ** (-0.5 / self.num_modalities)
            nn.init.normal_(factor, std=std)

    def config(self) -> dict:
        return {"proj_dim": self.proj_dim, "rank": self.rank}

    def fuse(self, xs: list[Tensor], mask: Tensor) -> tuple[Tensor, None]:
        fused = None
        for j, (m, x) in enumerate(zip(self.modalities, xs)):
            z = append_one(self.projections[m](x), mask[:, j])  # B×(P_m+1)
            term = torch.einsum("bp,rpd->brd", z, self.factors[j])  # B×r×D
            fused = term if fused is None else fused * term
        return fused.sum(dim=1) + self.bias, None  # B×D
