"""Modality dropout: randomly mark present modalities as missing during training.

Training with modalities dropped teaches the model to predict from any subset, which is what it
meets at test time when a modality is absent, and stops it leaning on one dominant modality.
Dropping works on the presence mask only: fusion methods already exclude masked modalities
exactly, so the features need not be touched.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfuse.fusion.base import check_probability


def drop_modalities(mask: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Drop each present modality with probability `p`, keeping at least one per row.

    `mask` is B×M bool (True = present). A row that would lose all of its present modalities
    keeps one of them, chosen uniformly at random; a modality absent in `mask` is never revived,
    and a row with nothing present stays empty. Pass a `generator` for reproducible drops (its
    device decides where the random numbers are drawn; they are then moved to `mask`'s device).
    """
    p = check_probability("p", p, upper_inclusive=True)
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(
            f"mask must be a B×M bool tensor, got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    device = generator.device if generator is not None else mask.device
    draws = torch.rand((2, *mask.shape), generator=generator, device=device).to(mask.device)
    kept = mask & (draws[0] >= p)  # B×M
    # Rescue rows left empty: keep the present modality with the highest second draw, i.e. one
    # chosen uniformly among those present. Absent ones score -1 and can never be picked.
    emptied = ~kept.any(dim=1) & mask.any(dim=1)  # B
    pick = torch.where(mask, draws[1], -1.0).argmax(dim=1)  # B
    rescue = nn.functional.one_hot(pick, mask.shape[1]).bool() & emptied[:, None]  # B×M
    return kept | rescue


class ModalityDropout(nn.Module):
    """`drop_modalities` as a module: active in training mode, the identity in eval mode."""

    def __init__(self, p: float = 0.25):
        super().__init__()
        self.p = check_probability("p", p, upper_inclusive=True)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.training or self.p == 0.0:
            return mask
        return drop_modalities(mask, self.p, generator)
