"""`FeatureScaler`: an input's features standardised per dimension by training-set statistics.

A frozen pretrained encoder's features come on very different scales (pooled means near 0.1,
pooled stage maxima near 20, some dimensions constant on a given dataset), and a fresh linear
layer trained on them with Adam grows the few large dimensions into over-confident logits: on
small datasets such heads reach their best accuracy but put near-zero probability on their
mistakes, and tanh-gated fusion saturates. Standardising first is the linear-probe practice of
MAE and DINO (a BatchNorm without affine parameters before the classifier); here the statistics
are fixed once from the training rows rather than tracked per batch, so small and ragged batches
(rows without the input) cannot disturb them, and the model stays a pure function at inference.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# The smallest scale, as a fraction of the median deviation of the features that vary.
MIN_RELATIVE_SCALE = 0.01


class FeatureScaler(nn.Module):
    """`(x - mean) / scale` per feature; rows whose input is absent stay zero.

    `mean` and `scale` are buffers (saved with the weights, constants in an ONNX graph); they
    start as the identity and `fit` sets them from a N×D tensor of training features.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @property
    def fitted(self) -> bool:
        """Whether `fit` has set the statistics (a fresh scaler is the identity)."""
        return bool(self.mean.any()) or not bool((self.scale == 1).all())

    @torch.no_grad()
    def fit(self, features: Tensor) -> FeatureScaler:
        """Statistics of `features` (N×D, the rows that have this input). A feature that
        does not vary keeps scale 1, as scikit-learn's StandardScaler does, so it maps to 0
        on these rows and is not blown up elsewhere; one that barely varies (a ReLU unit
        active on one row in a thousand) is divided by no less than a hundredth of the
        median feature's deviation, for the same reason."""
        if features.ndim != 2 or features.shape[1] != self.mean.numel():
            raise ValueError(
                f"FeatureScaler of {self.mean.numel()} features cannot fit a tensor of shape "
                f"{tuple(features.shape)}"
            )
        if features.shape[0] == 0:
            return self  # no row has the input: keep the identity
        x = features.double()
        mean, std = x.mean(0), x.std(0, unbiased=False)
        varies = std > self.eps
        if varies.any():
            std = std.clamp_min(MIN_RELATIVE_SCALE * float(std[varies].median()))
        std = torch.where(varies, std, torch.ones_like(std))
        self.mean.copy_(mean.to(self.mean.dtype))
        self.scale.copy_(std.to(self.scale.dtype))
        return self

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """B×D → B×D float32; `present` (B bool) zeroes the rows without the input, as
        before. In float32 even under autocast: a bf16 mean near 20 is off by up to 0.06."""
        out = (x.float() - self.mean.float()) / self.scale.float()
        if present is not None:
            out = out * present.to(out.dtype)[:, None]
        return out
