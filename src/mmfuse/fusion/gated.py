"""Gated multimodal unit (Arevalo et al. 2017), generalised from two modalities to M."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfuse.fusion.base import Fusion, masked_softmax, register, stack_projections


@register("gated")
class GatedFusion(Fusion):
    """`out = Σ_m z_m ⊙ tanh(W_m x_m)` with gates `z = softmax_m(G [x_1; ...; x_M; mask])`.

    The GMU's single sigmoid gate `z` / `1 - z` becomes a softmax over modalities, computed per
    output feature and over the present modalities only. The gates see every input at once, so
    one modality can switch another's contribution on or off per sample; the mask is appended to
    the gate input so a missing modality (whose input is zeros) is told apart from a present one
    that happens to be near zero. `last_gates` (B×M×D) holds the gates of the last forward; the
    returned weights are the gates averaged over features (B×M, sums to 1 over present ones).
    """

    has_weights = True

    def __init__(self, input_dims: Mapping[str, int], output_dim: int):
        super().__init__(input_dims, output_dim)
        self.projections = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(d, output_dim), nn.Tanh())
                for m, d in self.input_dims.items()
            }
        )
        total = sum(self.input_dims.values()) + self.num_modalities
        self.gate = nn.Linear(total, self.num_modalities * output_dim)
        self.last_gates: Tensor | None = None

    def config(self) -> dict:
        return {}

    def fuse(self, xs: list[Tensor], mask: Tensor) -> tuple[Tensor, Tensor]:
        h = stack_projections(self.projections, self.modalities, xs)  # B×M×D
        gate_in = torch.cat([*xs, mask.to(h.dtype)], dim=1)  # B×(ΣD_m + M)
        logits = self.gate(gate_in).view(-1, self.num_modalities, self.output_dim)  # B×M×D
        z = masked_softmax(logits, mask[:, :, None], dim=1)  # B×M×D, sums to 1 over modalities
        self.last_gates = z.detach()
        out = (z * torch.where(mask[:, :, None], h, 0.0)).sum(dim=1)  # B×D
        return out, z.mean(dim=2)
