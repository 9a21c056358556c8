"""A small image CNN trained from scratch: a quick baseline when no pretrained weights fit."""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.encoders.base import Encoder, check_shape, register
from mmfuse.features.spec import ImageSpec


def conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SmallCNN(Encoder):
    """`stages` blocks of two 3×3 convs; each block halves the resolution and doubles the width."""

    modality = "image"

    def __init__(self, width: int = 32, stages: int = 4, image_size: int = 224):
        super().__init__()
        layers, in_ch = [], 3
        for i in range(stages):
            out_ch = width * 2**i
            layers += [conv_bn_relu(in_ch, out_ch, stride=2), conv_bn_relu(out_ch, out_ch, 1)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.output_dim = in_ch
        self.input_spec = ImageSpec(size=image_size)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:  # B×3×H×W → B×C×h×w
        check_shape(x, ("B", 3, "H", "W"), "image encoder 'cnn'")
        return self.features(x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).flatten(2).transpose(1, 2)  # B×(h·w)×C

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))  # B×C


@register("image", "cnn")
def cnn(width: int = 32, stages: int = 4, image_size: int = 224) -> SmallCNN:
    return SmallCNN(width=width, stages=stages, image_size=image_size)
