"""Batched image transforms with random parameters drawn once per sample.

Each op splits its work as torchvision transforms v2 do: `make_params` draws one row of random
parameters per sample, `transform` applies them. Ops see `n×G×C×H×W`: n samples, each a group of
G images that share the sample's parameters (G = 1 for images, G = frames for a video clip, so a
flipped clip flips every frame). `Pipeline` takes `C×H×W`, `B×C×H×W` or a list of differently
sized `C×H×W` images and hides the grouping.

Images are uint8 in [0, 255] or float in [0, 1]; `ToFloat` turns the first into the second.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mmfuse.features.batched import Staged
from mmfuse.features.colour import blend, constant, greyscale, greyscale_mean
from mmfuse.features.draws import Source, rand_array, randint_below, randint_below_array
from mmfuse.features.spec import ImageSpec

Params = dict[str, torch.Tensor]


class ImageOp(nn.Module):
    """One transform step. Deterministic ops keep the default, empty `make_params`."""

    def make_params(
        self, x: torch.Tensor, generator: Source
    ) -> Params:  # x: n×G×C×H×W; every value has n rows
        return {}

    def transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:  # n×G×C×H×W
        raise NotImplementedError

    def forward(self, x: torch.Tensor, generator: Source = None) -> torch.Tensor:
        return self.transform(x, self.make_params(x, generator))


class ResizeShorter(ImageOp):
    """Resize so the shorter side is `size`, keeping the aspect ratio (bilinear, antialiased)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return resize(x, shorter_side_size(*x.shape[-2:], self.size))


class CenterCrop(ImageOp):
    """Cut the central `size×size` square; an image smaller than that is zero-padded first."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        x = _pad_to(x, self.size)
        h, w = x.shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return x[..., top : top + self.size, left : left + self.size]


class RandomCrop(ImageOp):
    """Cut a `size×size` square at a uniform random position per sample."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def make_params(self, x: torch.Tensor, generator: Source) -> Params:
        n, h, w = x.shape[0], *x.shape[-2:]
        if min(h, w) < self.size:
            raise ValueError(
                f"RandomCrop({self.size}) on a {h}×{w} image; resize the shorter side to at "
                f"least {self.size} first (ResizeShorter)"
            )
        top = randint_below(torch.full((n,), h - self.size + 1, device=x.device), generator)
        left = randint_below(torch.full((n,), w - self.size + 1, device=x.device), generator)
        return {"top": top, "left": left}

    def transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return crop(x, params["top"], params["left"], self.size, self.size)


class RandomResizedCrop(ImageOp):
    """Inception-style crop: random area fraction and aspect ratio per sample, resized to size.

    Parameters are drawn as torchvision's RandomResizedCrop draws them (ten tries, then a centre
    crop with the ratio clamped), but for every sample of the batch at once.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        tries: int = 10,
    ):
        super().__init__()
        if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(
                f"RandomResizedCrop needs 0 < scale[0] <= scale[1] <= 1 and "
                f"0 < ratio[0] <= ratio[1]; got scale={scale}, ratio={ratio}"
            )
        self.size, self.scale, self.ratio, self.tries = size, scale, ratio, tries

    def make_params(self, x: torch.Tensor, generator: Source) -> Params:
        # In numpy: these are a few numbers per sample, where torch's cost per call was most of
        # the crop's time. The same arithmetic in float64, so the same boxes.
        n, height, width = x.shape[0], *x.shape[-2:]
        u = rand_array((n, self.tries, 2), generator)  # n×tries×2
        target = height * width * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[..., 0])
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = np.exp(lo + (hi - lo) * u[..., 1])
        w = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # n×tries
        h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first, found = ok.argmax(axis=1), ok.any(axis=1)  # the first good try of each sample
        fallback_w, fallback_h = self._fallback(height, width)
        w = np.where(found, w[np.arange(n), first], fallback_w)
        h = np.where(found, h[np.arange(n), first], fallback_h)
        top = randint_below_array(height - h + 1, generator)
        left = randint_below_array(width - w + 1, generator)
        top = np.where(found, top, (height - h) // 2)
        left = np.where(found, left, (width - w) // 2)
        boxes = {"top": top, "left": left, "height": h, "width": w}
        return {k: torch.from_numpy(v).to(x.device) for k, v in boxes.items()}

    def _fallback(self, height: int, width: int) -> tuple[int, int]:
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            return width, round(width / self.ratio[0])
        if in_ratio > self.ratio[1]:
            return round(height * self.ratio[1]), height
        return width, height

    def transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        boxes = torch.stack([params[k] for k in ("top", "left", "height", "width")], 1).tolist()
        size = (self.size, self.size)
        # Crops differ in size per sample, so each is resized on its own: interpolate's antialias
        # needs one output grid per call. grid_sample would batch it but alias on downscaling.
        if not boxes:
            return x[..., : self.size, : self.size]
        grouped = x if x.ndim == 5 else x[:, None]  # n×G×C×H×W: a crop of sample i is G×C×h×w
        direct = _direct(x)
        crops = [
            resize_batch(grouped[i, ..., t : t + h, c : c + w], size, direct)
            for i, (t, c, h, w) in enumerate(boxes)
        ]
        out = torch.stack(crops)
        return out if x.ndim == 5 else out[:, 0]


class HorizontalFlip(ImageOp):
    """Mirror left-right with probability `p`, decided per sample."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def make_params(self, x: torch.Tensor, generator: Source) -> Params:
        return {
            "flip": torch.from_numpy(rand_array((x.shape[0],), generator) < self.p).to(x.device)
        }

    def transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        flip = params["flip"].view(-1, *[1] * (x.ndim - 1))  # n×1×1×1×1
        return torch.where(flip, x.flip(-1), x)


class ColorJitter(ImageOp):
    """Random brightness, contrast and saturation per sample, in that fixed order.

    Each factor is uniform in [max(0, 1 - s), 1 + s] for strength s and blended as torchvision
    blends (brightness towards black, contrast towards the mean grey level, saturation towards
    the greyscale image). Works on float in [0, 1]; uint8 goes through float and back.
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        super().__init__()
        for name, s in (("brightness", brightness), ("contrast", contrast),
                        ("saturation", saturation)):  # fmt: skip
            if s < 0:
                raise ValueError(f"ColorJitter {name}={s} must be >= 0 (0 turns it off)")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def make_params(self, x: torch.Tensor, generator: Source) -> Params:
        u = rand_array((x.shape[0], 3), generator)  # n×3
        # float32 strengths, as the torch version had: the same factors to the last bit.
        strength = np.array([self.brightness, self.contrast, self.saturation], dtype=np.float32)
        low = np.maximum(1 - strength, 0)
        return {"factors": torch.from_numpy(low + (1 + strength - low) * u).to(x.device)}

    def transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        uint8 = x.dtype == torch.uint8
        y = x.float() / 255 if uint8 else x
        f = params["factors"].to(y.dtype).view(-1, 3, 1, 1, 1, 1)  # n×3×1×1×1×1 (n×G×C×H×W)
        brightness, contrast, saturation = f.unbind(1)  # each n×1×1×1×1
        y = (brightness * y).clamp_(0, 1)  # a blend towards black
        y = blend(y, greyscale_mean(y), contrast)
        y = blend(y, greyscale(y), saturation)
        return (y * 255).round().to(torch.uint8) if uint8 else y


class ToFloat(ImageOp):
    """uint8 [0, 255] → float32 [0, 1]; float input passes through unchanged."""

    def transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return x.float().div_(255) if x.dtype == torch.uint8 else x


class Normalize(ImageOp):
    """(x - mean) / std per channel, on float images."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"Normalize needs equal-length mean and positive std: {mean}, {std}")
        self.mean, self.std = tuple(mean), tuple(std)

    def transform(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"Normalize got {x.dtype}; put ToFloat before it")
        if x.shape[-3] != len(self.mean):
            raise ValueError(
                f"image has {x.shape[-3]} channels but mean/std have {len(self.mean)}; "
                "fix the spec's mean and std"
            )
        mean, std = (constant(v, x.dtype, x.device).view(-1, 1, 1) for v in (self.mean, self.std))
        return (x - mean).div_(std)


def shorter_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the shorter side `short` and the aspect ratio kept, as
    `ResizeShorter` resizes to."""
    # Truncating the long side, as torchvision's Resize(int) does.
    long = int(short * max(height, width) / min(height, width))
    return (short, long) if height <= width else (long, short)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear antialiased resize of `…×C×H×W` to `size` (h, w); keeps uint8 as uint8."""
    size = tuple(size)
    if x.shape[-2:] == size:
        # Exactly what interpolate returns at scale 1, without its cost: frames read from the
        # decoded-sample store are already at this size.
        return x
    flat = x.reshape(-1, *x.shape[-3:])  # N×C×H×W, every leading dim folded into N
    y = resize_batch(flat, size, direct=_direct(x))
    return y.reshape(*x.shape[:-2], *size)


def _direct(x: torch.Tensor) -> bool:
    # uint8 antialiased bilinear exists on CPU only; elsewhere go through float and round back.
    return x.is_floating_point() or x.device.type == "cpu"


def resize_batch(x: torch.Tensor, size: tuple[int, int], direct: bool) -> torch.Tensor:
    """`resize` of an `N×C×H×W` tensor, `direct` being whether interpolate takes its dtype on its
    device: the random resized crop calls it once per crop, and the checks `resize` makes once
    per call were a fifth of the crop's time there."""
    if x.shape[-2:] == size:
        return x
    y = x if direct else x.float()
    y = nn.functional.interpolate(y, size=size, mode="bilinear", antialias=True)
    return y if direct else y.round_().clamp_(0, 255).to(x.dtype)


def crop(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Per-sample crop of `n×…×H×W` at offsets `top`, `left` (each `n`)."""
    # A slice per sample, stacked: on a CPU far cheaper than one advanced-index gather.
    boxes = zip(top.tolist(), left.tolist())
    return torch.stack([s[..., t : t + height, c : c + width] for s, (t, c) in zip(x, boxes)])


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h >= size and w >= size:
        return x
    dh, dw = max(0, size - h), max(0, size - w)
    return nn.functional.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


class Pipeline(nn.Module):
    """A sequence of ImageOps applied to images or, with `group`, to clips of frames.

    Call it on `C×H×W` (one image, any size), `B×C×H×W`, or a list of `C×H×W` of mixed sizes
    (each transformed alone, then stacked). A generator passed to the call overrides the one
    given at construction; with neither, torch's global RNG is used.

    The ops from `ToFloat` on (float conversion, flip, jitter, normalisation) keep the size, so
    they can run per batch on the device (`finish`) on what `stage` cut per sample, with the
    random parameters `stage` drew for them.
    """

    def __init__(self, ops: list[ImageOp], generator: Source = None):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.generator = generator
        self.split = next((i for i, op in enumerate(ops) if isinstance(op, ToFloat)), len(ops))
        resizing = [op for op in ops[self.split :] if isinstance(op, RESIZING_OPS)]
        if resizing:
            raise ValueError(
                f"{type(resizing[0]).__name__} after ToFloat: put crops and resizes before it"
            )

    def forward(
        self, x: torch.Tensor | list[torch.Tensor], generator: Source = None
    ) -> torch.Tensor:
        if isinstance(x, (list, tuple)):
            return torch.stack([self(item, generator) for item in x])
        if x.ndim == 3:
            return self.apply_grouped(x[None, None], generator)[0, 0]  # C×H×W
        if x.ndim == 4:
            return self.apply_grouped(x[:, None], generator)[:, 0]  # B×C×H×W
        raise ValueError(
            f"image batch of shape {tuple(x.shape)}; expected C×H×W, B×C×H×W or a list of C×H×W "
            "(for video use video_transform)"
        )

    def apply_grouped(self, x: torch.Tensor, generator: Source = None) -> torch.Tensor:
        """`n×G×C×H×W` → same layout, one draw of parameters per sample shared by its G images."""
        return self.finish(self.stage(x, generator))

    def stage(self, x: torch.Tensor, generator: Source = None) -> Staged:
        """The per-sample half on `n×G×C×H×W`: the ops before `ToFloat`, then the draws of the
        ops after it, in the order `apply_grouped` has always drawn them."""
        generator = generator if generator is not None else self.generator
        ops = list(self.ops)  # not sliced: slicing a ModuleList builds a new one, per sample
        for op in ops[: self.split]:
            x = op.transform(x, op.make_params(x, generator))
        params = {}
        for i, op in enumerate(ops[self.split :], start=self.split):
            # These ops draw one row per sample from the shape alone, so uint8 x will do.
            params.update({f"{i}.{k}": v for k, v in op.make_params(x, generator).items()})
        return Staged(x, params)

    def finish(self, staged: Staged) -> torch.Tensor:
        """The batch half, on the batch's device: `ToFloat` and the ops after it."""
        x = staged.data
        for i, op in enumerate(list(self.ops)[self.split :], start=self.split):
            prefix = f"{i}."
            params = {k[len(prefix) :]: v for k, v in staged.params.items() if k.startswith(prefix)}
            x = op.transform(x, {k: _on(v, x.device) for k, v in params.items()})
        return x


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if t.device == device else t.to(device)  # `to` is a call even when it moves nothing


RESIZING_OPS = (ResizeShorter, CenterCrop, RandomCrop, RandomResizedCrop)


def eval_ops(
    size: int, resize_to: int | None, mean: tuple[float, ...], std: tuple[float, ...]
) -> list[ImageOp]:
    """Resize the shorter side (default size·8/7), centre-crop, scale to float, normalise."""
    resize_to = round(size * 8 / 7) if resize_to is None else resize_to
    return [ResizeShorter(resize_to), CenterCrop(size), ToFloat(), Normalize(mean, std)]


def train_ops(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> list[ImageOp]:
    """Random resized crop, flip and colour jitter, then scale to float and normalise."""
    return [
        RandomResizedCrop(size),
        ToFloat(),
        HorizontalFlip(),
        ColorJitter(),
        Normalize(mean, std),
    ]


def image_transform(spec: ImageSpec, train: bool = False, generator: Source = None) -> Pipeline:
    """The preprocessing an encoder with this ImageSpec expects; deterministic when not `train`."""
    if train:
        return Pipeline(train_ops(spec.size, spec.mean, spec.std), generator)
    return Pipeline(eval_ops(spec.size, spec.resize, spec.mean, spec.std), generator)
