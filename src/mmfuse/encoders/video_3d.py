"""3D ResNets for video clips (Tran et al., 2018): R3D (full 3×3×3 convs) and R(2+1)D.

R(2+1)D factorises each 3×3×3 conv into a 1×3×3 spatial conv and a 3×1×1 temporal conv with a
ReLU between them; the middle width is chosen so both versions have about the same parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.encoders.base import Encoder, EncoderError, check_shape, register
from mmfuse.features.spec import VideoSpec

CONVS = ("3d", "2plus1d")


def conv3x3x3(in_ch: int, out_ch: int, stride: int, conv: str) -> nn.Module:
    if conv == "3d":
        return nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
    mid = max(1, (in_ch * out_ch * 27) // (in_ch * 9 + 3 * out_ch))
    return nn.Sequential(
        nn.Conv3d(in_ch, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, out_ch, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
    )


def stem(width: int, conv: str) -> nn.Sequential:
    # Keep the time axis at the stem (stride 1 in T): clips are only 8–16 frames long.
    if conv == "3d":
        return nn.Sequential(
            nn.Conv3d(3, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
    mid = max(1, 45 * width // 64)  # 45 → 64 channels in the paper's stem
    return nn.Sequential(
        nn.Conv3d(3, mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, width, (3, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


class BasicBlock3d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, conv: str):
        super().__init__()
        self.conv1 = conv3x3x3(in_ch, out_ch, stride, conv)
        self.bn1 = nn.BatchNorm3d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(out_ch, out_ch, 1, conv)
        self.bn2 = nn.BatchNorm3d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm3d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class VideoResNet(Encoder):
    modality = "video"

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        width: int = 64,
        conv: str = "3d",
        frames: int = 16,
        image_size: int = 112,
    ):
        super().__init__()
        if conv not in CONVS:
            raise EncoderError(f"unknown conv {conv!r}; valid convs: {', '.join(CONVS)}")
        self.name = "r3d" if conv == "3d" else "r2plus1d"
        self.stem = stem(width, conv)
        stages, in_ch = [], width
        for i, n_blocks in enumerate(layers):
            out_ch = width * 2**i
            blocks = [BasicBlock3d(in_ch, out_ch, 1 if i == 0 else 2, conv)]
            blocks += [BasicBlock3d(out_ch, out_ch, 1, conv) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.output_dim = in_ch
        self.input_spec = VideoSpec(frames=frames, size=image_size)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:  # B×T×3×H×W → B×C×T'×h×w
        check_shape(x, ("B", "T", 3, "H", "W"), f"video encoder {self.name!r}")
        x = x.transpose(1, 2)  # B×3×T×H×W, the layout Conv3d wants
        return self.stages(self.stem(x))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        # One token per (downsampled) time step: space is pooled, time order is kept.
        return self.feature_map(x).mean(dim=(3, 4)).transpose(1, 2)  # B×T'×C

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3, 4))  # B×C


@register("video", "r3d")
def r3d(
    width: int = 64,
    layers: tuple[int, ...] = (2, 2, 2, 2),
    frames: int = 16,
    image_size: int = 112,
) -> VideoResNet:
    return VideoResNet(tuple(layers), width, conv="3d", frames=frames, image_size=image_size)


@register("video", "r2plus1d")
def r2plus1d(
    width: int = 64,
    layers: tuple[int, ...] = (2, 2, 2, 2),
    frames: int = 16,
    image_size: int = 112,
) -> VideoResNet:
    return VideoResNet(tuple(layers), width, conv="2plus1d", frames=frames, image_size=image_size)
