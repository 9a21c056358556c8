"""ResNet-18/34 (He et al., 2016) with BasicBlocks, written here so torchvision is not needed.

Parameter names follow torchvision's (`conv1`, `bn1`, `layer1.0.downsample.0`, ...), so a
torchvision ResNet state_dict minus its `fc.*` keys loads with `load_state_dict`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmfuse.encoders.base import Encoder, check_shape, in_slices, register
from mmfuse.features.spec import ImageSpec


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(Encoder):
    """Stem (7×7 conv, max-pool) then one stage per entry of `layers`, each halving resolution."""

    modality = "image"

    def __init__(self, layers: tuple[int, ...], width: int = 64, image_size: int = 224):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = width
        for i, n_blocks in enumerate(layers):
            out_ch = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(in_ch, out_ch, stride)]
            blocks += [BasicBlock(out_ch, out_ch) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = out_ch
        self.num_stages = len(layers)
        self.output_dim = in_ch
        self.input_spec = ImageSpec(size=image_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:  # B×3×H×W → B×C×h×w
        check_shape(x, ("B", 3, "H", "W"), "image encoder 'resnet'")
        # The widest activation is the stem's: `width` channels at half the resolution.
        per_row = self.conv1.out_channels * math.ceil(x.shape[-2] / 2) * math.ceil(x.shape[-1] / 2)
        return in_slices(self, self._feature_map, x, per_row)

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).flatten(2).transpose(1, 2)  # B×(h·w)×C

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))  # B×C


@register("image", "resnet18")
def resnet18(width: int = 64, image_size: int = 224) -> ResNet:
    return ResNet(layers=(2, 2, 2, 2), width=width, image_size=image_size)


@register("image", "resnet34")
def resnet34(width: int = 64, image_size: int = 224) -> ResNet:
    return ResNet(layers=(3, 4, 6, 3), width=width, image_size=image_size)


@register("image", "resnet-tiny")
def resnet_tiny(width: int = 8, image_size: int = 64) -> ResNet:
    return ResNet(layers=(1, 1, 1, 1), width=width, image_size=image_size)
