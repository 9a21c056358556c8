"""A video encoder made of any registered image encoder applied to each frame, then pooled in time.

This is how a pretrained image model (e.g. `hf:` ViT or CLIP) becomes a video encoder without
3D weights; `pooling` decides how the per-frame embeddings become one clip embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.encoders.base import Encoder, EncoderError, build, check_shape, register
from mmfuse.features.spec import VideoSpec

POOLINGS = ("mean", "max", "attention", "lstm")


class FrameEncoder(Encoder):
    modality = "video"

    def __init__(self, image_encoder: Encoder, pooling: str = "mean", frames: int = 8):
        super().__init__()
        if pooling not in POOLINGS:
            raise EncoderError(
                f"unknown pooling {pooling!r}; valid poolings: {', '.join(POOLINGS)}"
            )
        self.image = image_encoder
        self.pooling = pooling
        dim = image_encoder.output_dim
        self.output_dim = dim
        if pooling == "attention":
            self.score = nn.Linear(dim, 1)  # one learned relevance score per frame
        elif pooling == "lstm":
            self.lstm = nn.LSTM(dim, dim, batch_first=True)
        image_spec = image_encoder.input_spec
        # Frames are preprocessed exactly as the image encoder expects its images.
        self.input_spec = VideoSpec(
            frames=frames,
            size=image_spec.size,
            resize=image_spec.resize,
            mean=image_spec.mean,
            std=image_spec.std,
        )

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, ("B", "T", 3, "H", "W"), "video encoder 'frames'")
        b, t = x.shape[:2]
        per_frame = self.image(x.flatten(0, 1))  # (B·T)×D
        tokens = per_frame.view(b, t, -1)  # B×T×D
        if self.pooling == "lstm":
            tokens = self.lstm(tokens)[0]  # B×T×D, each step has seen the frames before it
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(x)  # B×T×D
        if self.pooling == "mean":
            return tokens.mean(dim=1)
        if self.pooling == "max":
            return tokens.amax(dim=1)
        if self.pooling == "attention":
            weights = self.score(tokens).softmax(dim=1)  # B×T×1
            return (weights * tokens).sum(dim=1)
        return tokens[:, -1]  # lstm: the last step has read the whole clip


@register("video", "frames")
def frames(
    image: str = "resnet18",
    image_options: dict | None = None,
    pooling: str = "mean",
    frames: int = 8,
) -> FrameEncoder:
    image_encoder = build("image", image, **(image_options or {}))
    return FrameEncoder(image_encoder, pooling=pooling, frames=frames)
