"""Batched image transforms: shapes, per-sample parameters, seeding, and the ImageSpec pipelines."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse.features import ImageSpec, image_transform
from mmfuse.features.image import (
    CenterCrop,
    ColorJitter,
    HorizontalFlip,
    Normalize,
    Pipeline,
    RandomCrop,
    RandomResizedCrop,
    ResizeShorter,
    crop,
    resize,
)

SPEC = ImageSpec(size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def images(n=4, h=48, w=64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_eval_is_deterministic_with_expected_shape():
    transform = image_transform(SPEC, train=False)
    x = images()
    out = transform(x)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, transform(x))
    assert torch.equal(out, transform(x, seeded(1)))  # no randomness to seed


def test_eval_of_constant_image_is_normalised_constant():
    value = torch.tensor([0.1, 0.6, 0.9])
    x = value.view(1, 3, 1, 1).expand(2, 3, 50, 70).clone()
    out = image_transform(SPEC)(x)
    expected = (value - torch.tensor(SPEC.mean)) / torch.tensor(SPEC.std)
    torch.testing.assert_close(out, expected.view(1, 3, 1, 1).expand_as(out))


def test_eval_uint8_and_float_inputs_agree():
    x = images()
    a = image_transform(SPEC)(x)
    b = image_transform(SPEC)(x.float() / 255)
    # uint8 resizing rounds to whole levels: at most ~1/255 apart before dividing by std.
    assert (a - b).abs().max() <= 1.5 / 255 / min(SPEC.std)


def test_single_image_and_list_paths_match_batch():
    x = images()
    transform = image_transform(SPEC)
    batch = transform(x)
    torch.testing.assert_close(transform(x[1]), batch[1])
    mixed = [x[0], x[1, :, :40, :33], x[2, :, :20, :]]  # different sizes before the resize
    out = transform(mixed)
    assert out.shape == (3, 3, 32, 32)
    torch.testing.assert_close(out[0], batch[0])


def test_train_is_seeded_and_random_per_sample():
    transform = image_transform(SPEC, train=True)
    x = images(1).expand(6, -1, -1, -1)  # six copies of one image
    a, b, c = transform(x, seeded(0)), transform(x, seeded(0)), transform(x, seeded(1))
    assert a.shape == (6, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(not torch.equal(a[0], a[i]) for i in range(1, 6))  # one draw per sample
    constructed = image_transform(SPEC, train=True, generator=seeded(0))
    assert torch.equal(constructed(x), a)


def test_flip_is_decided_per_sample():
    x = images(1).expand(32, -1, -1, -1).float()
    out = HorizontalFlip(0.5)(x, seeded(0))
    flipped = torch.tensor([torch.equal(o, x[0].flip(-1)) for o in out])
    kept = torch.tensor([torch.equal(o, x[0]) for o in out])
    assert torch.all(flipped ^ kept)
    assert 0 < int(flipped.sum()) < 32


def test_random_crop_cuts_true_windows():
    x = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).view(2, 3, 10, 12)
    op = RandomCrop(5)
    params = op.make_params(x[:, None], seeded(2))
    out = op.transform(x[:, None], params)[:, 0]
    for i in range(2):
        t, left = int(params["top"][i]), int(params["left"][i])
        assert torch.equal(out[i], x[i, :, t : t + 5, left : left + 5])
    with pytest.raises(ValueError, match="ResizeShorter"):
        RandomCrop(20)(x[:, None])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    h=st.integers(4, 30),
    w=st.integers(4, 30),
    data=st.data(),
)
def test_crop_matches_slicing(n, h, w, data):
    x = torch.randn(n, 1, 2, h, w)
    ch, cw = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    top = torch.tensor([data.draw(st.integers(0, h - ch)) for _ in range(n)])
    left = torch.tensor([data.draw(st.integers(0, w - cw)) for _ in range(n)])
    out = crop(x, top, left, ch, cw)
    for i in range(n):
        assert torch.equal(out[i], x[i, ..., top[i] : top[i] + ch, left[i] : left[i] + cw])


@settings(max_examples=30, deadline=None)
@given(h=st.integers(8, 300), w=st.integers(8, 300), seed=st.integers(0, 1000))
def test_random_resized_crop_boxes_fit(h, w, seed):
    op = RandomResizedCrop(16)
    x = torch.zeros(8, 1, 3, h, w)
    p = op.make_params(x, seeded(seed))
    assert torch.all(p["top"] >= 0) and torch.all(p["left"] >= 0)
    assert torch.all(p["height"] >= 1) and torch.all(p["width"] >= 1)
    assert torch.all(p["top"] + p["height"] <= h) and torch.all(p["left"] + p["width"] <= w)
    assert op.transform(x, p).shape == (8, 1, 3, 16, 16)


def test_random_resized_crop_resizes_the_chosen_box():
    x = torch.rand(3, 1, 3, 40, 50)
    op = RandomResizedCrop(20)
    p = op.make_params(x, seeded(5))
    out = op.transform(x, p)
    for i in range(3):
        t, left, hh, ww = (int(p[k][i]) for k in ("top", "left", "height", "width"))
        box = x[i, :, :, t : t + hh, left : left + ww]
        expected = torch.nn.functional.interpolate(
            box, size=(20, 20), mode="bilinear", antialias=True
        )
        torch.testing.assert_close(out[i], expected)


def test_colour_jitter_per_sample_factors():
    x = torch.rand(5, 1, 3, 8, 8) * 0.5
    assert torch.equal(ColorJitter(0, 0, 0)(x, seeded(0)), x)
    out = ColorJitter(0.5, 0, 0)(x, seeded(0))  # brightness only: a scale per sample
    scale = out / x
    for s in scale:
        torch.testing.assert_close(s, s.flatten()[0].expand_as(s))
    assert len({round(float(s.flatten()[0]), 5) for s in scale}) == 5
    u8 = (x * 255).round().to(torch.uint8)
    assert ColorJitter()(u8, seeded(0)).dtype == torch.uint8


def test_resize_shorter_and_center_crop_shapes():
    x = images(2, 60, 80)
    assert ResizeShorter(30)(x[:, None]).shape == (2, 1, 3, 30, 40)
    assert ResizeShorter(30)(x[:, None]).dtype == torch.uint8
    assert ResizeShorter(30)(x[:, None].transpose(-1, -2)).shape == (2, 1, 3, 40, 30)
    assert ResizeShorter(30)(x[:, None, ..., :70]).shape == (2, 1, 3, 30, 35)
    assert CenterCrop(10)(x[:, None]).shape == (2, 1, 3, 10, 10)
    small = CenterCrop(100)(x[:, None].float())  # smaller than the crop: zero-padded
    assert small.shape == (2, 1, 3, 100, 100) and small[..., 0, 0].eq(0).all()


def test_normalize_errors_name_the_fix():
    with pytest.raises(ValueError, match="channels"):
        Normalize((0.5,), (0.5,))(torch.rand(1, 1, 3, 4, 4))
    with pytest.raises(TypeError, match="ToFloat"):
        Normalize((0.5,) * 3, (0.5,) * 3)(images(1)[:, None])
    with pytest.raises(ValueError, match="video_transform"):
        Pipeline([])(torch.rand(1, 2, 3, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = images()
    for train in (False, True):
        transform = image_transform(SPEC, train=train)
        cpu = transform(x, seeded(0))
        gpu = transform(x.cuda(), seeded(0))
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=0.05, rtol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_resize_to_the_same_size_is_what_interpolate_gives(dtype):
    # `resize` skips interpolate at scale 1; this holds it to interpolate's own answer.
    x = (torch.rand(2, 3, 55, 73, generator=torch.Generator().manual_seed(0)) * 255).to(dtype)
    direct = torch.nn.functional.interpolate(x, size=(55, 73), mode="bilinear", antialias=True)
    assert torch.equal(resize(x, (55, 73)), direct)
    assert resize(x, (48, 64)).shape == (2, 3, 48, 64)
