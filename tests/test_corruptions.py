"""Corruptions for robustness curves: image noise, audio SNR, video frame drop on raw media."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse.evaluate.corruptions import (
    CORRUPTIONS,
    Corruption,
    audio_snr,
    corruption_for,
    image_noise,
    video_frame_drop,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grey_image(h: int = 96, w: int = 96) -> torch.Tensor:
    return torch.full((3, h, w), 128, dtype=torch.uint8)  # 3×H×W, mid-grey: no clamping


def sine(seconds: float = 1.0, rate: int = 16_000, hz: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float32) / rate
    return 0.5 * torch.sin(2 * math.pi * hz * t)  # N


def video(t: int = 8, h: int = 6, w: int = 5, seed: int = 0) -> torch.Tensor:
    # Values 1..255 so no original frame is all black.
    return torch.randint(1, 256, (t, 3, h, w), dtype=torch.uint8, generator=seeded(seed))


SAMPLES = {
    "image": lambda: torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8, generator=seeded(1)),
    "audio": lambda: sine(0.25),
    "video": video,
    "numeric": lambda: torch.tensor([0.5]),  # one standardised number
}


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    signal = clean.double().square().mean()
    noise = (noisy.double() - clean.double()).square().mean()
    return float(10 * torch.log10(signal / noise))


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().mean())


# ---- contract over the registry -------------------------------------------------------------


@pytest.mark.parametrize("modality", sorted(CORRUPTIONS))
def test_every_level_keeps_shape_and_dtype_and_leaves_the_input_alone(modality):
    corruption = CORRUPTIONS[modality]
    x = SAMPLES[modality]()
    before = x.clone()
    for level in corruption.levels:
        out = corruption(x, level, seeded(0))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.data_ptr() != x.data_ptr()  # a new tensor, never the input itself
    assert torch.equal(x, before)


@pytest.mark.parametrize("modality", sorted(CORRUPTIONS))
def test_first_level_is_clean_and_returns_the_input_values(modality):
    corruption = CORRUPTIONS[modality]
    assert corruption.modality == modality
    assert corruption.is_clean(corruption.levels[0])
    assert not any(corruption.is_clean(level) for level in corruption.levels[1:])
    x = SAMPLES[modality]()
    assert torch.equal(corruption(x, corruption.levels[0], seeded(0)), x)
    assert torch.equal(corruption(x, corruption.levels[0]), x)  # no generator needed either


@pytest.mark.parametrize("modality", sorted(CORRUPTIONS))
def test_same_seed_same_output_other_seed_other_output(modality):
    corruption = CORRUPTIONS[modality]
    x = SAMPLES[modality]()
    level = corruption.levels[2]
    first = corruption(x, level, seeded(7))
    assert torch.equal(first, corruption(x, level, seeded(7)))
    assert not torch.equal(first, corruption(x, level, seeded(8)))
    assert corruption(x, level).shape == x.shape  # the global RNG works when no generator


def test_corruption_for_each_modality():
    assert corruption_for("text") is None
    for modality in ("image", "audio", "video"):
        assert corruption_for(modality) is CORRUPTIONS[modality]
    with pytest.raises(ValueError, match=r"'imgae'.*'image'"):
        corruption_for("imgae")


def test_corruption_needs_levels():
    with pytest.raises(ValueError, match="no levels"):
        Corruption("image", "gaussian noise", "std", (), image_noise)


# ---- image ----------------------------------------------------------------------------------


@pytest.mark.parametrize("std", [0.02, 0.05, 0.1])
def test_image_noise_std_matches_request(std):
    image = grey_image()
    out = image_noise(image, std, seeded(0))
    measured = float((out.double() - 128.0).std() / 255.0)
    assert measured == pytest.approx(std, rel=0.02)
    assert abs(float((out.double() - 128.0).mean())) < 0.5  # zero-mean noise


def test_image_noise_clamps_to_pixel_range():
    white = torch.full((3, 16, 16), 255, dtype=torch.uint8)
    out = image_noise(white, 0.4, seeded(0))
    assert out.dtype == torch.uint8 and int(out.max()) == 255 and int(out.min()) < 255


def test_image_noise_grows_with_level():
    image = grey_image(32, 32)
    levels = CORRUPTIONS["image"].levels
    diffs = [mean_abs_diff(image_noise(image, s, seeded(3)), image) for s in levels]
    assert diffs[0] == 0.0
    assert all(a < b for a, b in pairwise(diffs)), diffs


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3, 8, 8),  # float
        torch.zeros(8, 8, 3, dtype=torch.uint8),  # channels last
        torch.zeros(8, 8, dtype=torch.uint8),  # no channel axis
        torch.zeros(1, 3, 8, 8, dtype=torch.uint8),  # a batch
    ],
)
def test_image_noise_rejects_wrong_layout(bad):
    with pytest.raises(ValueError, match=r"3×H×W"):
        image_noise(bad, 0.1)


@pytest.mark.parametrize("std", [-0.1, math.nan, math.inf])
def test_image_noise_rejects_bad_std(std):
    with pytest.raises(ValueError, match=rf"std={std}.*>= 0"):
        image_noise(grey_image(4, 4), std)


# ---- audio ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [30.0, 20.0, 10.0, 0.0, -10.0])
def test_audio_snr_is_exact(target):
    wave = sine()
    out = audio_snr(wave, target, seeded(0))
    assert out.dtype == torch.float32
    assert snr_db(wave, out) == pytest.approx(target, abs=0.1)


def test_audio_snr_keeps_silence_silent():
    silence = torch.zeros(1000)
    assert torch.equal(audio_snr(silence, 0.0, seeded(0)), silence)


def test_audio_noise_grows_as_snr_falls():
    wave = sine(0.5)
    levels = CORRUPTIONS["audio"].levels
    diffs = [mean_abs_diff(audio_snr(wave, snr, seeded(3)), wave) for snr in levels]
    assert diffs[0] == 0.0
    assert all(a < b for a, b in pairwise(diffs)), diffs


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(100, dtype=torch.int16),  # integer samples
        torch.zeros(2, 100),  # stereo
        torch.zeros(0),  # empty
    ],
)
def test_audio_snr_rejects_wrong_layout(bad):
    with pytest.raises(ValueError, match=r"mono float waveform of shape N"):
        audio_snr(bad, 10.0)


@pytest.mark.parametrize("level", [math.nan, -math.inf])
def test_audio_snr_rejects_bad_level(level):
    with pytest.raises(ValueError, match=rf"snr_db={level}.*math.inf"):
        audio_snr(sine(0.1), level)


# ---- video ----------------------------------------------------------------------------------


def black_frames(frames: torch.Tensor) -> torch.Tensor:
    return (frames.flatten(1) == 0).all(dim=1)  # T bool


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(0, 40),
    fraction=st.floats(0.0, 1.0, allow_nan=False),
    seed=st.integers(0, 10**6),
)
def test_frame_drop_blacks_out_exactly_round_fraction_t_frames(total, fraction, seed):
    frames = video(total, 3, 2, seed=seed % 100)
    out = video_frame_drop(frames, fraction, seeded(seed))
    dropped = black_frames(out)
    assert int(dropped.sum()) == round(fraction * total)
    assert torch.equal(out[~dropped], frames[~dropped])  # the rest pass untouched


@settings(max_examples=30, deadline=None)
@given(total=st.integers(1, 30), seed=st.integers(0, 10**6))
def test_frame_drop_nests_across_levels_for_one_seed(total, seed):
    frames = video(total, 2, 2)
    levels = CORRUPTIONS["video"].levels
    masks = [black_frames(video_frame_drop(frames, f, seeded(seed))) for f in levels]
    for smaller, larger in pairwise(masks):
        assert torch.all(larger[smaller])  # frames dropped at a lower level stay dropped


def test_frame_drop_extremes():
    frames = video(10)
    assert torch.equal(video_frame_drop(frames, 0.0, seeded(0)), frames)
    out = video_frame_drop(frames, 1.0, seeded(0))
    assert out.shape == frames.shape and out.dtype == torch.uint8
    assert int(out.count_nonzero()) == 0


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(4, 3, 8, 8),  # float
        torch.zeros(3, 8, 8, dtype=torch.uint8),  # one image, no time axis
        torch.zeros(2, 4, 3, 8, 8, dtype=torch.uint8),  # a batch
    ],
)
def test_frame_drop_rejects_wrong_layout(bad):
    with pytest.raises(ValueError, match=r"T×C×H×W"):
        video_frame_drop(bad, 0.5)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan])
def test_frame_drop_rejects_fraction_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match=rf"fraction={fraction}.*\[0, 1\]"):
        video_frame_drop(video(4), fraction)
