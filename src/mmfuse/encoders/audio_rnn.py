"""A recurrent encoder (LSTM or GRU) over MFCC frames."""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.encoders.base import Encoder, EncoderError, check_shape, register
from mmfuse.features.spec import AudioSpec

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
POOLINGS = ("mean", "max", "last")


class MFCCRNN(Encoder):
    modality = "audio"

    def __init__(
        self,
        spec: AudioSpec,
        hidden: int = 128,
        num_layers: int = 2,
        cell: str = "lstm",
        bidirectional: bool = True,
        pooling: str = "mean",
        dropout: float = 0.0,
    ):
        super().__init__()
        if cell not in CELLS:
            raise EncoderError(f"unknown cell {cell!r}; valid cells: {', '.join(CELLS)}")
        if pooling not in POOLINGS:
            raise EncoderError(
                f"unknown pooling {pooling!r}; valid poolings: {', '.join(POOLINGS)}"
            )
        self.input_spec = spec
        self.pooling = pooling
        self.bidirectional = bidirectional
        # MFCC coefficients differ in scale by orders of magnitude (c0 is the log energy).
        self.norm = nn.BatchNorm1d(spec.n_mfcc)
        self.rnn = CELLS[cell](
            spec.n_mfcc,
            hidden,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.output_dim = hidden * (2 if bidirectional else 1)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape(x, ("B", self.input_spec.n_mfcc, "T"), "audio encoder 'mfcc-lstm' (MFCC)")
        out, state = self.rnn(self.norm(x).transpose(1, 2))  # out: B×T×D
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c)
        return out, h_n

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]  # B×T×D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h_n = self._run(x)
        if self.pooling == "mean":
            return out.mean(dim=1)
        if self.pooling == "max":
            return out.amax(dim=1)
        # "last": the final state of each direction, i.e. each has read the whole clip.
        if self.bidirectional:
            return torch.cat([h_n[-2], h_n[-1]], dim=1)  # B×2H
        return h_n[-1]  # B×H


@register("audio", "mfcc-lstm")
def mfcc_lstm(
    hidden: int = 128,
    num_layers: int = 2,
    cell: str = "lstm",
    bidirectional: bool = True,
    pooling: str = "mean",
    dropout: float = 0.0,
    n_mfcc: int = 20,
    n_mels: int = 64,
    sample_rate: int = 16000,
    duration: float = 1.0,
    hop_length: int = 160,
) -> MFCCRNN:
    spec = AudioSpec(
        feature="mfcc",
        n_mfcc=n_mfcc,
        n_mels=n_mels,
        sample_rate=sample_rate,
        duration=duration,
        hop_length=hop_length,
    )
    return MFCCRNN(spec, hidden, num_layers, cell, bidirectional, pooling, dropout)
