"""A classification head: dropout, an optional hidden layer, then class logits."""

from __future__ import annotations

from torch import nn


class ClassifierHead(nn.Sequential):
    """B×D fused features → B×C logits. `hidden=0` is a linear probe on the fused features."""

    def __init__(self, input_dim: int, num_classes: int, dropout: float = 0.1, hidden: int = 0):
        if hidden:
            layers = [
                nn.Dropout(dropout),
                nn.Linear(input_dim, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            ]
        else:
            layers = [nn.Dropout(dropout), nn.Linear(input_dim, num_classes)]
        super().__init__(*layers)
        self.num_classes = num_classes
