"""Corruptions of one modality's raw input, at graded levels, for robustness curves.

A robustness curve is a model's score as one modality's input gets worse. Each modality gets the
degradation the literature treats as its standard one:

- image: additive Gaussian noise, the sensor noise of ImageNet-C's "gaussian noise"
  (Hendrycks & Dietterich 2019);
- audio: white noise mixed at a set signal-to-noise ratio, the channel noise that noisy speech
  and audio-event benchmarks report in dB SNR;
- video: frames lost in transit and shown black, as a receiver displays dropped frames;
- numeric: additive Gaussian measurement noise, in units of the column's training standard
  deviation (it is added to the standardised value, the one place that unit is known).

Text and categories have no corruption here (`corruption_for("text")` is None).

Every corruption acts on the *decoded raw media of one sample*, in the layouts the readers return
(image `3×H×W` uint8, audio `N` float waveform, video `T×C×H×W` uint8), before the encoder's
preprocessing: the model's own resizing, normalisation and feature extraction then see the
corrupted input exactly as they would see a bad recording.

Randomness comes from an optional `torch.Generator`, drawn on the generator's device, so a seeded
generator gives the same output on CPU and CUDA data. With the same seed the levels share one
draw: the image and audio noise patterns are the same, only scaled, and the frames dropped at a
smaller fraction are a subset of those dropped at a larger one. A curve built with a fresh
generator of the same seed per level therefore compares levels on the same randomness.

    corruption = corruption_for("audio")
    for level in corruption.levels:  # clean first
        noisy = corruption(wave, level, torch.Generator().manual_seed(sample_index))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mmfuse.data.modalities import MODALITIES
from mmfuse.features.audio_augment import add_noise

__all__ = [
    "CORRUPTIONS",
    "Corruption",
    "audio_snr",
    "corruption_for",
    "image_noise",
    "numeric_noise",
    "video_frame_drop",
]


@dataclass(frozen=True)
class Corruption:
    """One modality's corruption: its function and the levels a robustness curve visits.

    `levels` go from clean to worst and `levels[0]` is the clean level (the corruption returns
    its input unchanged there). `unit` labels the curve's x axis.
    """

    modality: str  # "image" | "audio" | "video" | "numeric"
    name: str  # e.g. "gaussian noise"
    unit: str  # x-axis label, e.g. "SNR (dB)"
    levels: tuple[float, ...]  # clean first, then worse and worse
    fn: Callable[[torch.Tensor, float, torch.Generator | None], torch.Tensor]

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError(
                f"Corruption {self.name!r} has no levels; pass them from clean to worst, "
                "the clean one first"
            )

    def __call__(
        self, x: torch.Tensor, level: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.fn(x, level, generator)

    def is_clean(self, level: float) -> bool:
        """Whether `level` is the clean one (`levels[0]`), where the input passes unchanged."""
        return level == self.levels[0]


def image_noise(
    image: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`image` (uint8 `3×H×W`) plus Gaussian noise of std `std` × 255, rounded and clamped.

    `std` is a fraction of the 0..255 pixel range (0.1 adds noise of std 25.5 grey levels); 0
    returns an unchanged copy. The result is a new uint8 `3×H×W` tensor.
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"image_noise needs an RGB uint8 tensor of shape 3×H×W (as read_image returns), got "
            f"dtype {image.dtype} and shape {tuple(image.shape)}; for H×W×3 use permute(2, 0, 1)"
        )
    std = float(std)
    if not (math.isfinite(std) and std >= 0.0):
        raise ValueError(
            f"image noise std={std} must be finite and >= 0 (a fraction of the 0..255 range; "
            "0 is clean)"
        )
    if std == 0.0:
        return image.clone()
    source = generator.device if generator is not None else image.device
    noise = torch.randn(image.shape, generator=generator, dtype=torch.float32, device=source)
    noise = noise.to(image.device)  # 3×H×W
    noisy = image.float() + noise * (std * 255.0)
    return noisy.round().clamp(0.0, 255.0).to(torch.uint8)


def audio_snr(
    wave: torch.Tensor, snr_db: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mono `wave` (float, shape `N`) plus white Gaussian noise at exactly `snr_db` dB SNR.

    `snr_db=math.inf` returns an unchanged copy. The SNR is exact for the noise actually drawn
    (see :func:`mmfuse.features.audio_augment.add_noise`); a silent clip stays silent. The result
    is not clipped to [-1, 1], since clipping would change the SNR.
    """
    if not wave.is_floating_point() or wave.ndim != 1 or wave.numel() == 0:
        raise ValueError(
            f"audio_snr needs a non-empty mono float waveform of shape N (as read_audio "
            f"returns), got dtype {wave.dtype} and shape {tuple(wave.shape)}; mix channels down "
            "and convert integer samples to float first"
        )
    snr_db = float(snr_db)
    if math.isnan(snr_db) or snr_db == -math.inf:
        raise ValueError(
            f"audio snr_db={snr_db} must be a real number of dB or math.inf (clean); "
            "lower is noisier"
        )
    if snr_db == math.inf:
        return wave.clone()
    return add_noise(wave, snr_db, noise=None, generator=generator)


def video_frame_drop(
    frames: torch.Tensor, fraction: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`frames` (uint8 `T×C×H×W`) with `round(fraction × T)` random frames replaced by black.

    The dropped frames are the first ones of a `torch.randperm(T)` drawn from `generator`, so with
    the same seed a larger fraction drops a superset of a smaller one. `fraction=0` returns an
    unchanged copy, `fraction=1` an all-black clip of the same shape.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(
            f"video_frame_drop needs a uint8 tensor of shape T×C×H×W (as read_video returns), "
            f"got dtype {frames.dtype} and shape {tuple(frames.shape)}"
        )
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(
            f"video frame-drop fraction={fraction} must be in [0, 1] (0 is clean, 1 drops "
            "every frame)"
        )
    total = frames.shape[0]
    count = round(fraction * total)
    out = frames.clone()
    if count == 0:
        return out
    source = generator.device if generator is not None else frames.device
    order = torch.randperm(total, generator=generator, device=source)
    out[order[:count].to(frames.device)] = 0  # dropped frames show black
    return out


def numeric_noise(
    value: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A standardised number plus Gaussian noise of `std` training standard deviations."""
    std = float(std)
    if std < 0:
        raise ValueError(f"numeric noise std={std} must be >= 0 (0 is clean)")
    if std == 0:
        return value.clone()
    source = generator.device if generator is not None else value.device
    noise = torch.randn(value.shape, generator=generator, device=source).to(value.device)
    return value + std * noise


CORRUPTIONS: dict[str, Corruption] = {
    "image": Corruption(
        "image",
        "gaussian noise",
        "noise std (fraction of pixel range)",
        (0.0, 0.05, 0.1, 0.2, 0.4),
        image_noise,
    ),
    "audio": Corruption(
        "audio", "white noise", "SNR (dB)", (math.inf, 20.0, 10.0, 0.0, -10.0), audio_snr
    ),
    "video": Corruption(
        "video",
        "frame drop",
        "fraction of frames dropped",
        (0.0, 0.25, 0.5, 0.75, 1.0),
        video_frame_drop,
    ),
    "numeric": Corruption(
        "numeric",
        "gaussian noise",
        "noise std (training standard deviations)",
        (0.0, 0.25, 0.5, 1.0, 2.0),
        numeric_noise,
    ),
}


def corruption_for(modality: str) -> Corruption | None:
    """The corruption defined for `modality`, or None where there is none ("text")."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return CORRUPTIONS.get(modality)
