"""Late (decision-level) fusion: one classifier per modality, their logits combined."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfuse.fusion.base import Fusion, masked_softmax, register

COMBINES = ("mean", "weighted", "stack")


@register("late")
class LateFusion(Fusion):
    """Per-modality heads give logits `s_m = head_m(x_m)` (B×C); they are combined by `combine`:

    - `mean`: the average over present modalities,
    - `weighted`: a learned softmax weight per modality, renormalised over present ones,
    - `stack`: a linear stacker over `[s_1; ...; s_M; mask]` (missing logits zeroed; the mask
      tells the stacker which are missing), which can learn cross-class corrections.

    Decision-level: `output_dim` is the number of classes and the output is logits, so the model
    must not put a head on top (`is_decision_level = True`). Each head sees only its own
    modality, so a modality's errors stay its own and heads can be trained or swapped
    independently; the cost is that cross-modal feature interactions are never modelled.
    `modality_logits()` gives the per-modality logits, e.g. for per-modality auxiliary losses.
    """

    is_decision_level = True
    has_weights = True  # for mean and weighted; set per instance below

    def __init__(
        self,
        input_dims: Mapping[str, int],
        output_dim: int,
        combine: str = "mean",
        hidden_dim: int = 0,
    ):
        super().__init__(input_dims, output_dim)
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {list(COMBINES)}, got {combine!r}")
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 0:
            raise ValueError(
                f"hidden_dim must be an int >= 0 (0 = linear heads), got {hidden_dim!r}"
            )
        self.combine = combine
        self.hidden_dim = hidden_dim
        # The stacker mixes logits across classes, so it has no per-modality weights to report.
        self.has_weights = combine != "stack"
        self.heads = nn.ModuleDict({m: self._head(d) for m, d in self.input_dims.items()})
        if combine == "weighted":
            self.logit_weights = nn.Parameter(torch.zeros(self.num_modalities))  # M
        if combine == "stack":
            m, c = self.num_modalities, output_dim
            self.stacker = nn.Linear(m * c + m, c)

    def _head(self, input_dim: int) -> nn.Module:
        if self.hidden_dim == 0:
            return nn.Linear(input_dim, self.output_dim)
        return nn.Sequential(
            nn.Linear(input_dim, self.hidden_dim),
            nn.GELU(),
            nn.Linear(self.hidden_dim, self.output_dim),
        )

    @property
    def weights(self) -> Tensor:
        """Modality weights (M) when all are present: learned for `weighted`, equal for `mean`."""
        if self.combine == "weighted":
            return torch.softmax(self.logit_weights.detach(), dim=0)
        if self.combine == "mean":
            return torch.full((self.num_modalities,), 1.0 / self.num_modalities)
        raise AttributeError("combine='stack' has no per-modality weights; see stacker.weight")

    def config(self) -> dict:
        return {"combine": self.combine, "hidden_dim": self.hidden_dim}

    def modality_logits(self, features: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """Each modality's own logits, B×M×C; rows of missing modalities are zeros."""
        xs, mask = self.prepare(features, mask)
        return self._modality_logits(xs, mask)

    def _modality_logits(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        s = torch.stack([self.heads[m](x) for m, x in zip(self.modalities, xs)], dim=1)  # B×M×C
        return torch.where(mask[:, :, None], s, 0.0)

    def fuse(self, xs: list[Tensor], mask: Tensor) -> tuple[Tensor, Tensor | None]:
        s = self._modality_logits(xs, mask)  # B×M×C
        if self.combine == "stack":
            stack_in = torch.cat([s.flatten(1), mask.to(s.dtype)], dim=1)  # B×(M·C + M)
            return self.stacker(stack_in), None
        if self.combine == "weighted":
            scores = self.logit_weights.to(s.dtype).expand_as(mask)
        else:
            scores = torch.zeros(mask.shape, dtype=s.dtype, device=s.device)
        w = masked_softmax(scores, mask)  # B×M
        return torch.einsum("bm,bmc->bc", w, s), w
