"""Image reader: every mode and format to RGB uint8, EXIF, draft decoding, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from media_factory import big_png, image_file, pattern, poisoned_float_tiff, tall_png
from mmfuse import MediaError, read_image
from mmfuse.data import image_size
from mmfuse.data.budgets import Budgets

GOOD = [
    "png_l", "png_la", "png_p", "png_rgb", "png_rgba", "png_i16",
    "jpeg_l", "jpeg_rgb", "jpeg_cmyk", "webp_rgb", "webp_rgba",
    "bmp_l", "bmp_p", "bmp_rgb", "tiff_l", "tiff_la", "tiff_p", "tiff_rgb", "tiff_rgba",
    "tiff_i16", "tiff_cmyk", "gif_p", "png_named_jpg",
]  # fmt: skip


@pytest.mark.parametrize("key", GOOD)
def test_every_mode_decodes_to_rgb_uint8(media, key):
    img = read_image(media[key])
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 48)
    if key.endswith(("_la", "_i16")):
        return  # the factory varies alpha / uses a narrow 16-bit range; tested on their own below
    # The pattern's horizontal green ramp must survive every conversion (lossy ones roughly).
    green = img[1, 16, :].float()
    assert green[-1] - green[len(green) // 2] > 40, key


def test_alpha_is_composited_onto_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2, :, :] = (255, 0, 0, 255)  # opaque red on top, fully transparent black below
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    img = read_image(path)
    assert img[:, 0, 0].tolist() == [255, 0, 0]
    assert img[:, 3, 0].tolist() == [255, 255, 255]


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    img = read_image(path)
    assert img[0, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(media):
    img = read_image(media["jpeg_exif_rotated"])
    upright = torch.from_numpy(pattern(48, 32)).permute(2, 0, 1)
    assert img.shape == upright.shape
    assert (img.float() - upright.float()).abs().mean() < 12
    assert image_size(media["jpeg_exif_rotated"]) == (48, 32)


def test_jpeg_draft_decodes_smaller(tmp_path):
    path = image_file(tmp_path, "RGB", "jpeg", size=(400, 320))
    full = read_image(path)
    small = read_image(path, draft_size=(100, 80))
    assert full.shape == (3, 320, 400)
    assert small.shape == (3, 80, 100)  # JPEG scales by 1/2, 1/4, 1/8: 1/4 here


@pytest.mark.parametrize(
    "key, reason",
    [
        ("random_jpg", "unreadable"),
        ("huge_header_png", "too-large"),
        ("empty_wav", "zero-length"),
        ("text_mp4", "wrong-modality"),
        ("h264_mp4", "wrong-modality"),
    ],
)
def test_bad_files_raise_media_error(media, key, reason):
    with pytest.raises(MediaError) as e:
        read_image(media[key])
    assert e.value.reason == reason and str(media[key]) in str(e.value)


def test_missing_truncated_and_limits(tmp_path, media):
    with pytest.raises(MediaError, match="missing"):
        read_image(tmp_path / "nope.png")
    path = image_file(tmp_path, "RGB", "jpeg", size=(200, 160))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MediaError) as e:
        read_image(cut)
    assert e.value.reason == "truncated"
    with pytest.raises(MediaError, match="too-large"):
        read_image(media["png_rgb"], budgets=Budgets(image_pixels=100))
    with pytest.raises(MediaError, match="too-large"):
        image_size(media["huge_header_png"])


# ---------------------------------------------------------------------------------------------
# Issue 14: budgets checked from the header, before a pixel is decoded; poisoned float images


def test_extreme_aspect_ratio_is_refused_before_decoding(tmp_path):
    path = tall_png(tmp_path)  # 1×65535: resizing its shorter side to 256 makes 16.8 Mpx
    assert path.stat().st_size < 1000
    with pytest.raises(MediaError) as e:
        read_image(path, draft_size=(256, 256))
    assert e.value.reason == "too-large" and "65535:1" in str(e.value)
    assert "MMFUSE_MAX_IMAGE_ASPECT" in str(e.value)
    img = read_image(path, budgets=Budgets(image_aspect=70000))
    assert img.shape == (3, 65535, 1)


def test_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    path = big_png(tmp_path, 9400)
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda im: loads.append(im.size) or real_load(im)
    )
    with pytest.raises(MediaError) as e:
        read_image(path)
    assert e.value.reason == "too-large" and "88360000 pixels" in str(e.value)
    assert "MMFUSE_MAX_IMAGE_PIXELS" in str(e.value)
    assert image_size(path) == (9400, 9400)
    assert loads == []  # refused, and measured, from the header
    read_image(image_file(tmp_path, "RGB", "png"))
    assert set(loads) == {(48, 32)}  # the spy sees a real decode


def test_pixel_budget_from_the_environment(monkeypatch, media):
    monkeypatch.setenv("MMFUSE_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(MediaError, match="1000-pixel image budget"):
        read_image(media["png_rgb"])  # 48×32 = 1536 pixels


def test_jpeg_budget_counts_the_pixels_draft_decodes(tmp_path):
    path = image_file(tmp_path, "RGB", "jpeg", size=(400, 320))  # 128000 pixels
    budgets = Budgets(image_pixels=20_000)
    with pytest.raises(MediaError, match="too-large"):
        read_image(path, budgets=budgets)
    small = read_image(path, draft_size=(100, 80), budgets=budgets)  # decoded at 1/4: 8000
    assert small.shape == (3, 80, 100)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_float_image_is_refused(tmp_path, value):
    path = poisoned_float_tiff(tmp_path, value)
    with pytest.raises(MediaError) as e:
        read_image(path)
    assert e.value.reason == "non-finite" and str(path) in str(e.value)


def test_finite_float_image_still_reads(tmp_path):
    path = poisoned_float_tiff(tmp_path, 0.25, name="fine.tif")
    img = read_image(path)
    assert img.shape == (3, 32, 48) and int(img[0, 0, 0]) == 64  # 0.25 of 255, rounded
