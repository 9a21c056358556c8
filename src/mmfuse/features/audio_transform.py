"""The audio pipeline an AudioSpec implies: fix the clip length, then compute the named feature.

Train mode crops at a random offset per clip and applies SpecAugment to the log-mel; eval mode
(`train=False`, or `.eval()` on the module) crops the centre and is deterministic. Waveforms must
already be at `spec.sample_rate`. `stage` is the per-clip half (crop, random draws) and `finish`
the batch half (log-mel, masks, MFCC) that `features.batched.FrontEnd` runs on the device.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.features.audio import dct_matrix, log_mel
from mmfuse.features.audio_augment import apply_masks, draw_masks
from mmfuse.features.batched import Staged
from mmfuse.features.draws import randint_below
from mmfuse.features.spec import AudioSpec

FEATURES = ("log_mel", "mfcc", "waveform")


def fix_length(
    wave: torch.Tensor,
    length: int,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop or zero-pad the last dim of `wave` (`…×N`) to `length` samples.

    Longer clips are cut at a random offset per clip when `train`, else around the centre;
    shorter clips are zero-padded at the end.
    """
    n = wave.shape[-1]
    if n < length:
        return nn.functional.pad(wave, (0, length - n))
    if n == length:
        return wave
    flat = wave.reshape(-1, n)  # B×N
    if not train:
        start = (n - length) // 2
        return wave[..., start : start + length]
    slack = torch.full((flat.shape[0],), n - length + 1, device=wave.device)
    start = randint_below(slack, generator)  # B
    index = start[:, None] + torch.arange(length, device=wave.device)  # B×length
    return flat.gather(-1, index).reshape(*wave.shape[:-1], length)


def clip_length(spec: AudioSpec) -> int:
    """Samples per clip: `duration` seconds at `sample_rate`."""
    return round(spec.duration * spec.sample_rate)


def frame_count(spec: AudioSpec, length: int) -> int:
    """Frames of the (centred) log-mel of `length` samples, as `log_mel` computes it."""
    win = spec.win_length or spec.n_fft
    hop = spec.hop_length or win // 4
    return 1 + (length + 2 * (spec.n_fft // 2) - spec.n_fft) // hop


class AudioTransform(nn.Module):
    """Waveform batch (`…×N`) → the feature `spec.feature` names, sized as `spec` says.

    Output: `…×n_mels×T` for "log_mel", `…×n_mfcc×T` for "mfcc", `…×L` for "waveform", where
    L = round(duration · sample_rate). A single clip (`N`) works too, for per-sample loading.
    """

    def __init__(
        self,
        spec: AudioSpec,
        train: bool = False,
        freq_masks: int = 2,
        time_masks: int = 2,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if spec.feature not in FEATURES:
            raise ValueError(
                f"AudioSpec.feature={spec.feature!r} is not one of {FEATURES}; fix the encoder's "
                "input_spec (or the audio block of config.json)"
            )
        self.spec = spec
        self.train(train)
        self.freq_masks, self.time_masks = freq_masks, time_masks
        self.generator = generator

    def forward(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        lead = wave.shape[:-1]
        out = self.finish(self.stage(wave, generator))  # B×…
        return out.reshape(*lead, *out.shape[1:])

    def stage(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> Staged:
        """The per-clip half: `…×N` cut to the clip length (`B×L`), and in train mode the
        SpecAugment masks `finish` applies, drawn from `generator` (they need only the shape)."""
        spec = self.spec
        generator = generator if generator is not None else self.generator
        length = clip_length(spec)
        wave = fix_length(wave, length, self.training, generator).reshape(-1, length)  # B×L
        params = {}
        if self.training and spec.feature != "waveform" and (self.freq_masks or self.time_masks):
            frames = frame_count(spec, length)
            params["freq_mask"], params["time_mask"] = draw_masks(
                wave.shape[0],
                spec.n_mels,
                frames,
                freq_masks=self.freq_masks,
                freq_width=max(1, spec.n_mels // 8),
                time_masks=self.time_masks,
                time_width=max(1, frames // 10),
                generator=generator,
                device=wave.device,
            )
        return Staged(wave, params)

    def finish(self, staged: Staged) -> torch.Tensor:
        """The batch half, on the batch's device: `B×L` → the feature (`B×M×T`, `B×C×T`, `B×L`)."""
        spec, wave = self.spec, staged.data
        if spec.feature == "waveform":
            return wave
        db = log_mel(
            wave,
            sr=spec.sample_rate,
            n_fft=spec.n_fft,
            hop_length=spec.hop_length,
            win_length=spec.win_length,
            n_mels=spec.n_mels,
            fmin=spec.fmin,
            fmax=spec.fmax,
            top_db=spec.top_db,
        )  # B×M×T
        if "freq_mask" in staged.params:
            db = apply_masks(db, staged.params["freq_mask"], staged.params["time_mask"])
        if spec.feature == "mfcc":
            basis = dct_matrix(spec.n_mels, spec.n_mfcc, 0.0, db.dtype, db.device)  # C×M
            return torch.matmul(basis, db)  # B×C×T
        return db

    def extra_repr(self) -> str:
        return f"feature={self.spec.feature!r}, train={self.training}"


def audio_transform(
    spec: AudioSpec, train: bool = False, generator: torch.Generator | None = None
) -> AudioTransform:
    """The preprocessing an encoder with this AudioSpec expects; deterministic when not `train`."""
    return AudioTransform(spec, train=train, generator=generator)
