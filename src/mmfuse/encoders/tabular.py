"""Encoders for one number or one category: each tabular column is an input of its own.

`numeric/mlp` embeds a standardised number as FT-Transformer's feature tokenizer does (a learned
vector scaled by the value, plus a bias: `x·w + b`), then a small MLP so that the feature can act
non-linearly before fusion. `categorical/embedding` looks the category up in a learned table
whose row 0 is "unknown"; while training, a category is dropped to "unknown" with probability
`unknown_rate`, so that row learns what a category never seen in training should mean.

The statistics and the category list are options (filled from the training split by
`train.run.model_config_for`), so they are saved in config.json with the encoder and come back
as its `input_spec` when a model folder is loaded.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.encoders.base import Encoder, check_shape, register
from mmfuse.features.spec import CategoricalSpec, NumericSpec
from mmfuse.features.tabular import UNKNOWN


class NumericEncoder(Encoder):
    modality = "numeric"

    def __init__(self, mean: float = 0.0, std: float = 1.0, dim: int = 32):
        super().__init__()
        self.input_spec = NumericSpec(mean=float(mean), std=float(std))
        self.tokenizer = nn.Linear(1, dim)  # x·w + b
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(dim, dim))
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, ("B", 1), "numeric encoder 'mlp'")
        token = self.tokenizer(x)  # B×D
        return token + self.mlp(token)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).unsqueeze(1)  # B×1×D


class CategoricalEncoder(Encoder):
    modality = "categorical"

    def __init__(self, categories=(), dim: int = 32, unknown_rate: float = 0.05):
        super().__init__()
        self.input_spec = CategoricalSpec(categories=tuple(str(c) for c in categories))
        self.embedding = nn.Embedding(len(categories) + 1, dim)  # row 0: unknown
        self.unknown_rate = unknown_rate
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, ("B", 1), "categorical encoder 'embedding'")
        index = x[:, 0].long()  # B
        if self.training and self.unknown_rate > 0:
            dropped = torch.rand(index.shape, device=index.device) < self.unknown_rate
            index = index.masked_fill(dropped, UNKNOWN)
        return self.embedding(index)  # B×D

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).unsqueeze(1)  # B×1×D


@register("numeric", "mlp")
def numeric_mlp(mean: float = 0.0, std: float = 1.0, dim: int = 32):
    return NumericEncoder(mean=mean, std=std, dim=dim)


@register("categorical", "embedding")
def categorical_embedding(categories=(), dim: int = 32, unknown_rate: float = 0.05):
    return CategoricalEncoder(categories=categories, dim=dim, unknown_rate=unknown_rate)
