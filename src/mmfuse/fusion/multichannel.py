"""Multichannel fusion: one branch per modality, branch outputs stacked as channels, conv-mixed."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfuse.fusion.base import Fusion, check_positive_int, register, stack_projections


@register("multichannel")
class MultichannelFusion(Fusion):
    """Branches `h_m = MLP_m(x_m)` (P dims) → channels B×M×P → Conv1d(M→C, k) → Linear → D.

    Stacking the branches as the channels of a 1-D signal lets a small convolution mix
    modalities position by position (and across k neighbouring features), with far fewer
    weights than a dense layer over the concatenation when P is large. A missing modality's
    channel is a learned per-modality "missing" embedding, as in `concat`.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        output_dim: int,
        branch_dim: int = 64,
        channels: int = 8,
        kernel_size: int = 3,
    ):
        super().__init__(input_dims, output_dim)
        self.branch_dim = check_positive_int("branch_dim", branch_dim)
        self.channels = check_positive_int("channels", channels)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd so the conv keeps the branch length, got {kernel_size}"
            )
        self.branches = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Linear(d, branch_dim), nn.GELU(), nn.Linear(branch_dim, branch_dim)
                )
                for m, d in self.input_dims.items()
            }
        )
        self.missing = nn.Parameter(torch.zeros(self.num_modalities, branch_dim))  # M×P
        self.mix = nn.Sequential(
            nn.Conv1d(self.num_modalities, channels, kernel_size, padding=kernel_size // 2),
            nn.GELU(),
        )
        self.out = nn.Linear(channels * branch_dim, output_dim)

    def config(self) -> dict:
        return {
            "branch_dim": self.branch_dim,
            "channels": self.channels,
            "kernel_size": self.kernel_size,
        }

    def fuse(self, xs: list[Tensor], mask: Tensor) -> tuple[Tensor, None]:
        h = stack_projections(self.branches, self.modalities, xs)  # B×M×P: M channels of length P
        h = torch.where(mask[:, :, None], h, self.missing.to(h.dtype))
        mixed = self.mix(h)  # B×C×P
        return self.out(mixed.flatten(1)), None  # B×D
