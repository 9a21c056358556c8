"""Early (feature-level) fusion: project each modality, concatenate, mix with one linear layer."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfuse.fusion.base import Fusion, check_positive_int, register, stack_projections


@register("concat")
class ConcatFusion(Fusion):
    """`out = W [h_1; ...; h_M] + b` with `h_m = GELU(W_m x_m + b_m)` (P dims each).

    A missing modality's slot holds a learned per-modality "missing" embedding when
    `missing_embedding=True` (the default), else zeros. Zeros are ambiguous — a present modality
    can project to (near) zero too — and they shift the statistics the output layer was trained
    on; a learned embedding acts as a learned imputation the output layer can recognise.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        output_dim: int,
        proj_dim: int = 128,
        missing_embedding: bool = True,
    ):
        super().__init__(input_dims, output_dim)
        self.proj_dim = check_positive_int("proj_dim", proj_dim)
        self.use_missing_embedding = bool(missing_embedding)
        self.projections = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(d, proj_dim), nn.GELU())
                for m, d in self.input_dims.items()
            }
        )
        missing = torch.zeros(self.num_modalities, proj_dim)  # M×P
        if self.use_missing_embedding:
            # Zero-initialised so an untrained model starts from "missing = zeros".
            self.missing = nn.Parameter(missing)
        else:
            self.register_buffer("missing", missing, persistent=False)
        self.out = nn.Linear(self.num_modalities * proj_dim, output_dim)

    def config(self) -> dict:
        return {"proj_dim": self.proj_dim, "missing_embedding": self.use_missing_embedding}

    def fuse(self, xs: list[Tensor], mask: Tensor) -> tuple[Tensor, None]:
        h = stack_projections(self.projections, self.modalities, xs)  # B×M×P
        h = torch.where(mask[:, :, None], h, self.missing.to(h.dtype))  # B×M×P
        return self.out(h.flatten(1)), None  # B×M·P → B×D
