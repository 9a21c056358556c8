"""Video clip transforms: pick `spec.frames` frames, then image ops shared by the whole clip.

A clip is `T×C×H×W` (uint8 or float in [0, 1]); a batch of clips is `B×T×C×H×W`. Random spatial
parameters are drawn once per clip and applied to every frame, so a crop never jumps and a flip
flips the whole clip. Output keeps the layout: `spec.frames×C×size×size` per clip.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.features.batched import Staged
from mmfuse.features.draws import Source, rand
from mmfuse.features.image import (
    ColorJitter,
    HorizontalFlip,
    Normalize,
    Pipeline,
    RandomCrop,
    ResizeShorter,
    ToFloat,
    eval_ops,
)
from mmfuse.features.spec import VideoSpec


def frame_indices(
    total: int,
    frames: int,
    train: bool = False,
    generator: Source = None,
    clips: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Which `frames` of a `total`-frame clip to keep: segment sampling (TSN, Wang et al. 2016).

    The clip is cut into `frames` equal segments; eval takes each segment's middle frame, train
    takes a uniform random frame inside each segment (temporal jitter that still covers the whole
    clip). Fewer than `frames` frames repeat some. Returns `frames` indices, or `clips×frames`
    with a separate draw per clip when `clips` is given. Use the same indices to cut the clip's
    audio, so both modalities see the same moments.
    """
    if total < 1 or frames < 1:
        raise ValueError(f"need total >= 1 and frames >= 1 frames, got total={total}, {frames=}")
    n = 1 if clips is None else clips
    edges = torch.linspace(0, total, frames + 1, dtype=torch.float64, device=device)
    start, width = edges[:-1], edges[1:] - edges[:-1]  # frames each
    device = torch.device(device)
    if train:
        offset = rand((n, frames), generator, device)  # n×frames
    else:
        offset = torch.full((n, frames), 0.5, dtype=torch.float64, device=device)
    index = (start + offset * width).floor().long().clamp_(0, total - 1)  # n×frames
    return index[0] if clips is None else index


class VideoTransform(nn.Module):
    """Clip(s) → `frames×C×size×size` normalised float, as an encoder's VideoSpec asks."""

    def __init__(self, spec: VideoSpec, train: bool = False, generator: Source = None):
        super().__init__()
        self.spec = spec
        self.train(train)
        resize_to = round(spec.size * 8 / 7) if spec.resize is None else spec.resize
        if train:
            ops = [
                ResizeShorter(resize_to),
                RandomCrop(spec.size),
                ToFloat(),
                HorizontalFlip(),
                ColorJitter(0.2, 0.2, 0.2),
                Normalize(spec.mean, spec.std),
            ]
        else:
            ops = eval_ops(spec.size, resize_to, spec.mean, spec.std)
        self.frame_ops = Pipeline(ops, generator)
        self.generator = generator

    def forward(
        self,
        clip: torch.Tensor,
        generator: Source = None,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`T×C×H×W` or `B×T×C×H×W` → same layout with `spec.frames` frames.

        `indices` (`frames` or `B×frames`) skips frame sampling, for when the caller already drew
        them with `frame_indices` to cut the audio too.
        """
        single = clip.ndim == 4
        x = self.finish(self.stage(clip[None] if single else clip, generator, indices))
        return x[0] if single else x

    def stage(
        self,
        clip: torch.Tensor | list[torch.Tensor],
        generator: Source = None,
        indices: torch.Tensor | None = None,
    ) -> Staged:
        """The per-clip half on `B×T×C×H×W` (or a list of `T×C×H×W` clips of one shape): pick
        the frames, resize and crop them (uint8 stays uint8), and draw the flip and jitter
        `finish` applies."""
        if isinstance(clip, torch.Tensor):
            if clip.ndim not in (4, 5):
                raise ValueError(
                    f"video of shape {tuple(clip.shape)}; expected T×C×H×W or B×T×C×H×W "
                    "(for a single image use image_transform)"
                )
            clip = [clip] if clip.ndim == 4 else list(clip)
        generator = generator if generator is not None else self.generator
        total, device = clip[0].shape[0], clip[0].device
        if indices is None:
            indices = frame_indices(
                total, self.spec.frames, self.training, generator, len(clip), device
            )
        indices = indices.to(device).expand(len(clip), -1)  # B×frames
        # Each clip's frames picked alone: no copy of the whole pools into one batch first.
        x = torch.stack([c.index_select(0, i) for c, i in zip(clip, indices)])  # B×F×C×H×W
        return self.frame_ops.stage(x, generator)

    def finish(self, staged: Staged) -> torch.Tensor:
        """The batch half, on the batch's device: `B×F×C×size×size` normalised float."""
        return self.frame_ops.finish(staged)

    def extra_repr(self) -> str:
        return f"frames={self.spec.frames}, size={self.spec.size}, train={self.training}"


def video_transform(
    spec: VideoSpec, train: bool = False, generator: Source = None
) -> VideoTransform:
    """The preprocessing an encoder with this VideoSpec expects; deterministic when not `train`."""
    return VideoTransform(spec, train=train, generator=generator)
