"""A 2D CNN over log-mel spectrograms, in the style of PANNs' CNN6/CNN10 (Kong et al., 2020)."""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.encoders.base import Encoder, check_shape, register
from mmfuse.features.spec import AudioSpec


class ConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )
        # ceil_mode keeps at least one step when a short clip has fewer frames than 2**stages.
        self.pool = nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.convs(x))


class MelCNN(Encoder):
    modality = "audio"

    def __init__(self, spec: AudioSpec, width: int = 32, stages: int = 4):
        super().__init__()
        self.input_spec = spec
        # Log-mel values sit around -80..0 dB and differ per band; normalising each mel band
        # (as PANNs' bn0 does) lets the convs start from unit-scale inputs.
        self.norm = nn.BatchNorm1d(spec.n_mels)
        blocks, in_ch = [], 1
        for i in range(stages):
            out_ch = width * 2**i
            blocks.append(ConvBlock(in_ch, out_ch))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.output_dim = in_ch

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, ("B", self.input_spec.n_mels, "T"), "audio encoder 'mel-cnn' (log-mel)")
        x = self.norm(x).unsqueeze(1)  # B×1×n_mels×T
        x = self.blocks(x)  # B×C×F'×T'
        return x.mean(dim=2).transpose(1, 2)  # B×T'×C: one token per (pooled) audio frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(x)
        # Mean + max over time (PANNs): max keeps short events that a mean would dilute.
        return tokens.mean(dim=1) + tokens.amax(dim=1)  # B×C


@register("audio", "mel-cnn")
def mel_cnn(
    width: int = 32,
    stages: int = 4,
    n_mels: int = 64,
    sample_rate: int = 16000,
    duration: float = 1.0,
    hop_length: int = 160,
) -> MelCNN:
    spec = AudioSpec(
        feature="log_mel",
        n_mels=n_mels,
        sample_rate=sample_rate,
        duration=duration,
        hop_length=hop_length,
    )
    return MelCNN(spec, width=width, stages=stages)
