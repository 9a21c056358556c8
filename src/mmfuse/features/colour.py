"""Colour arithmetic of the image transforms: greyscale, its mean, blends (float images), and
the small constant tensors they and `Normalize` use, made once."""

from __future__ import annotations

import functools

import torch

_GREY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


@functools.lru_cache(maxsize=64)
def constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`torch.tensor(values)` of this dtype and device, made once: the front end runs on every
    training batch, and making a small tensor is a call each time. Callers must not write into
    it."""
    return torch.tensor(values, dtype=dtype, device=device)


def _grey_weights(x: torch.Tensor) -> torch.Tensor:  # 1×3, of x's dtype and device
    return constant((_GREY,), x.dtype, x.device)


def greyscale(x: torch.Tensor) -> torch.Tensor:  # …×C×H×W → …×1×H×W
    """The luma of the first three channels (a one-channel image is its own)."""
    if x.shape[-3] == 1:
        return x
    rgb = x if x.shape[-3] == 3 else x[..., :3, :, :]
    # One matrix product over the channels where three scalings and two sums were five passes.
    return torch.matmul(_grey_weights(x), rgb.flatten(-2)).unflatten(-1, x.shape[-2:])


def greyscale_mean(x: torch.Tensor) -> torch.Tensor:  # …×C×H×W → …×1×1×1
    """The mean of `greyscale(x)`, from the channels' means (the greyscale is linear in them)."""
    if x.shape[-3] == 1:
        return x.mean(dim=(-3, -2, -1), keepdim=True)
    means = x[..., :3, :, :].mean(dim=(-2, -1), keepdim=True)  # …×3×1×1
    return torch.matmul(_grey_weights(x), means.flatten(-3)[..., None])[..., None]


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`other + factor·(x - other)`, clamped to [0, 1]: torchvision's `_blend` of float images."""
    # lerp broadcasts `other` (a per-image grey level) itself: one pass over the batch where
    # multiply, multiply, add took three.
    return torch.lerp(other, x, factor).clamp_(0, 1)
