"""Tensor fusion (Zadeh et al. 2017, "Tensor Fusion Network for Multimodal Sentiment Analysis")."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfuse.fusion.base import Fusion, per_modality_dims, register

# Above this many outer-product entries the output layer alone is too big to be useful.
MAX_PRODUCT_DIM = 2**20


def append_one(h: Tensor, present: Tensor) -> Tensor:
    """`[h, 1]` for present rows and the neutral `[0, ..., 0, 1]` for missing ones: B×P → B×(P+1).

    The constant 1 is what keeps the unimodal and lower-order terms in the outer product; for a
    missing modality only that 1 survives, so the product reduces to the other modalities' terms.
    """
    h = torch.where(present[:, None], h, 0.0)
    return torch.cat([h, h.new_ones(h.shape[0], 1)], dim=1)


def modality_projections(input_dims: Mapping[str, int], proj_dims: list[int]) -> nn.ModuleDict:
    """Small per-modality subnetworks `GELU(W_m x_m + b_m)`, shared in form with `lowrank`."""
    return nn.ModuleDict(
        {
            m: nn.Sequential(nn.Linear(d, p), nn.GELU())
            for (m, d), p in zip(input_dims.items(), proj_dims)
        }
    )


@register("tensor")
class TensorFusion(Fusion):
    """`out = W vec(z_1 ⊗ z_2 ⊗ ... ⊗ z_M) + b`, `z_m = [h_m, 1]`, `h_m = GELU(W_m x_m + b_m)`.

    The outer product holds every unimodal, bimodal, ..., M-modal product of features, so the
    output layer can model all interactions explicitly — at a cost of Π_m (P_m + 1) · D weights.
    Keep `proj_dim` small (an int for all modalities or a {modality: P_m} dict), or use `lowrank`.
    """

    def __init__(
        self, input_dims: Mapping[str, int], output_dim: int, proj_dim: int | Mapping[str, int] = 8
    ):
        super().__init__(input_dims, output_dim)
        self.proj_dim = dict(proj_dim) if isinstance(proj_dim, Mapping) else proj_dim
        self.proj_dims = per_modality_dims("proj_dim", proj_dim, self.modalities)
        self.product_dim = math.prod(p + 1 for p in self.proj_dims)
        if self.product_dim > MAX_PRODUCT_DIM:
            raise ValueError(
                f"tensor fusion with proj_dim={proj_dim} over {self.num_modalities} modalities "
                f"has Π(P_m+1) = {self.product_dim} product features (> {MAX_PRODUCT_DIM}); "
                f"lower proj_dim or use the 'lowrank' method"
            )
        self.projections = modality_projections(self.input_dims, self.proj_dims)
        self.out = nn.Linear(self.product_dim, output_dim)

    def config(self) -> dict:
        return {"proj_dim": self.proj_dim}

    def neutral_inputs(self, xs: list[Tensor], mask: Tensor) -> list[Tensor]:
        """The `z_m = [h_m, 1]` vectors (B×(P_m+1) each), neutral for missing modalities."""
        return [
            append_one(self.projections[m](x), mask[:, j])
            for j, (m, x) in enumerate(zip(self.modalities, xs))
        ]

    def fuse(self, xs: list[Tensor], mask: Tensor) -> tuple[Tensor, None]:
        zs = self.neutral_inputs(xs, mask)
        product = zs[0]  # B×(P_1+1)
        for z in zs[1:]:
            # Batched outer product, flattened as we go: B×K, B×Q → B×K·Q (row-major, like kron).
            product = (product[:, :, None] * z[:, None, :]).flatten(1)
        return self.out(product), None  # B×Π(P_m+1) → B×D
