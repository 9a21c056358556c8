"""Audio augmentation on batches: SpecAugment masks and additive noise at a set SNR.

Every sample gets its own random parameters, drawn from an optional `torch.Generator` so a seeded
run is repeatable.
"""

from __future__ import annotations

import torch

from mmfuse.features.draws import randint_below


def spec_augment(
    spec: torch.Tensor,
    freq_masks: int = 2,
    freq_width: int = 8,
    time_masks: int = 2,
    time_width: int = 10,
    fill: float | str = "mean",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment frequency and time masking (Park et al. 2019) on `…×F×T`, per sample.

    Each sample gets `freq_masks` bands of width uniform in [0, freq_width] bins and `time_masks`
    bands of width uniform in [0, time_width] frames, each at a uniform position. Masked cells
    take `fill`: a number, or "mean" for each sample's own mean (0 dB is loud on a log-mel scale,
    so a constant 0 would add energy rather than remove it). Returns a new tensor.
    """
    if spec.ndim < 2:
        raise ValueError(f"spec_augment needs …×F×T, got shape {tuple(spec.shape)}")
    for name, value in (("freq_masks", freq_masks), ("freq_width", freq_width),
                        ("time_masks", time_masks), ("time_width", time_width)):  # fmt: skip
        if value < 0:
            raise ValueError(f"{name}={value} must be >= 0 (0 turns that masking off)")
    if isinstance(fill, str) and fill != "mean":
        raise ValueError(f'fill={fill!r}: pass a number or "mean"')

    x = spec.reshape(-1, *spec.shape[-2:])  # B×F×T
    n, f, t = x.shape
    freq, time = draw_masks(
        n, f, t, freq_masks, freq_width, time_masks, time_width, generator, x.device
    )
    return apply_masks(spec, freq, time, fill)


def draw_masks(
    n: int,
    f: int,
    t: int,
    freq_masks: int = 2,
    freq_width: int = 8,
    time_masks: int = 2,
    time_width: int = 10,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SpecAugment's random bands for `n` spectrograms of `f×t` → `(n×f, n×t)` bool on `device`
    (default: the generator's, else the CPU), True where masked. They need only the shape, so
    a loader can draw them before the spectrogram exists and the batch apply them later."""
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    freq = _band_mask(n, f, freq_masks, freq_width, generator, device)  # n×f
    time = _band_mask(n, t, time_masks, time_width, generator, device)  # n×t
    return freq, time


def apply_masks(
    spec: torch.Tensor, freq: torch.Tensor, time: torch.Tensor, fill: float | str = "mean"
) -> torch.Tensor:
    """`spec` (`…×F×T`, `B` spectrograms in all) with the `B×F` and `B×T` masks of `draw_masks`
    set to `fill` (a number, or "mean": each spectrogram's own mean). Returns a new tensor."""
    x = spec.reshape(-1, *spec.shape[-2:])  # B×F×T
    mask = freq[:, :, None] | time[:, None, :]  # B×F×T
    if fill == "mean":
        value = x.mean(dim=(-2, -1), keepdim=True)  # B×1×1
    else:
        value = torch.tensor(float(fill), dtype=x.dtype, device=x.device)
    return torch.where(mask, value, x).reshape(spec.shape)


def _band_mask(
    n: int,
    size: int,
    count: int,
    max_width: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:  # n×size bool, True inside any of `count` random bands per row
    if count == 0 or size == 0:
        return torch.zeros(n, size, dtype=torch.bool, device=device)
    cap = torch.full((n, count), min(max_width, size) + 1, device=device)
    width = randint_below(cap, generator)  # n×count, in [0, max_width]
    start = randint_below(size - width + 1, generator)  # n×count, band fits inside
    pos = torch.arange(size, device=device)  # size
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # n×count×size
    return inside.any(dim=1)


def add_noise(
    wave: torch.Tensor,
    snr_db: float | torch.Tensor,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`wave` (`…×N`) plus noise scaled so each clip's signal-to-noise ratio is `snr_db`.

    `snr_db` is one number or one per clip (shape `…`). `noise` defaults to white Gaussian noise
    drawn from `generator`; pass recorded noise of the same shape to mix that instead. The SNR is
    exact for the noise actually added: the scale uses that noise's own power, not its expected
    power. A silent clip stays silent (no signal power to set a ratio against).
    """
    if not wave.is_floating_point():
        raise TypeError(f"wave dtype {wave.dtype} is not floating point; convert it first")
    if noise is None:
        noise = torch.randn(
            wave.shape,
            generator=generator,
            dtype=wave.dtype,
            device=generator.device if generator is not None else wave.device,
        ).to(wave.device)
    elif noise.shape != wave.shape:
        raise ValueError(
            f"noise shape {tuple(noise.shape)} must equal wave shape {tuple(wave.shape)}; "
            "crop or tile the noise first"
        )
    snr_db = torch.as_tensor(snr_db, dtype=wave.dtype, device=wave.device)
    signal_power = wave.square().mean(-1)  # …
    noise_power = noise.square().mean(-1).clamp(min=torch.finfo(wave.dtype).tiny)  # …
    scale = torch.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))  # …
    return wave + scale[..., None] * noise
