"""Image reading with Pillow: any mode in, RGB uint8 `3×H×W` out."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mmfuse.data.budgets import Budgets, resolve
from mmfuse.data.modalities import DEFAULT_MAX_BYTES, check_file, media_errors_only, unreadable
from mmfuse.errors import MediaError

# Bytes per pixel a decode holds at its peak: Pillow's 4-byte pixels, the 3-byte copy numpy
# gets from it (Pillow joins it from chunks, so briefly twice), and the 3×H×W tensor.
DECODE_BYTES_PER_PIXEL = 14


@media_errors_only("image")
def read_image(
    path: str | Path,
    *,
    draft_size: tuple[int, int] | None = None,
    budgets: Budgets | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    background: tuple[int, int, int] = (255, 255, 255),
) -> torch.Tensor:
    """Decode an image to an RGB uint8 tensor of shape `3×H×W`.

    EXIF orientation is applied. `draft_size=(w, h)` lets JPEG decode at a reduced scale (1/2,
    1/4, 1/8) no smaller than the given size: several times faster when the model wants small
    inputs. Transparent pixels are composited onto `background`, as a viewer shows them.
    Before any pixel is decoded, the header's size is checked against `budgets` (default:
    `Budgets.from_env()`): pixels to decode (after the JPEG draft scale) and aspect ratio.
    Raises `MediaError` for anything that goes wrong ("too-large" over a budget, "non-finite"
    for NaN/Inf in a float image).
    """
    path = check_file(path, max_bytes)
    limits = resolve(budgets)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_image_size(path, im.size, limits, pixels=im.format != "JPEG")
                if draft_size is not None and im.format == "JPEG":
                    im.draft("RGB", draft_size)
                check_image_size(path, im.size, limits)  # what will really be decoded
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb_tensor(path, im, background)
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaError(
            path, "too-large", f"{e} (Pillow's own limit, above any budget mmfuse sets)"
        ) from None
    except UnidentifiedImageError as e:
        raise unreadable(path, "image", e) from None
    except OSError as e:
        reason = "truncated" if "truncated" in str(e).lower() else "unreadable"
        raise MediaError(path, reason, str(e)) from None
    except (ValueError, SyntaxError, EOFError) as e:
        raise MediaError(path, "unreadable", str(e)) from None


def check_image_size(
    path: str | Path, size: tuple[int, int], budgets: Budgets, pixels: bool = True
) -> None:
    """Raise `MediaError("too-large")` when a `(w, h)` picture is over the image budgets: its
    aspect ratio, and (with `pixels`) its pixel count. Video frames are checked by it too.
    """
    w, h = size
    if pixels and w * h > budgets.image_pixels:
        raise MediaError(
            path,
            "too-large",
            f"{w}×{h} = {w * h} pixels is over the {budgets.image_pixels}-pixel image budget "
            f"(a decompression bomb or a mistaken file); {budgets.how_to_raise('image_pixels')}",
        )
    if min(w, h) > 0 and max(w, h) / min(w, h) > budgets.image_aspect:
        raise MediaError(
            path,
            "too-large",
            f"{w}×{h} pixels is {max(w, h) / min(w, h):.0f}:1, over the "
            f"{budgets.image_aspect:g}:1 aspect budget (resizing its shorter side would make "
            f"the longer one huge); crop it, or {budgets.how_to_raise('image_aspect')}",
        )


@media_errors_only("image")
def image_size(path: str | Path, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[int, int]:
    """(width, height) from the header alone, after EXIF orientation."""
    path = check_file(path, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                # Pillow decodes a whole PNG to look for an eXIf chunk after the pixels; one
                # before them is already in `info`, and only that one is read here.
                header_only = im.format != "PNG" or "exif" in im.info
                orientation = im.getexif().get(0x0112, 1) if header_only else 1
    except Image.DecompressionBombError as e:
        raise MediaError(path, "too-large", str(e)) from None
    except UnidentifiedImageError as e:
        raise unreadable(path, "image", e) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise MediaError(path, "unreadable", str(e)) from None
    # Orientations 5–8 swap width and height.
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _to_rgb_tensor(path: Path, im: Image.Image, background: tuple[int, int, int]) -> torch.Tensor:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16/32-bit greyscale: Pillow's convert("RGB") clips at 255, turning most of the
        # image white; scale the range down instead.
        arr = np.asarray(im, dtype=np.float64)
        scale = 257.0 if im.mode.startswith("I;16") or arr.max(initial=0) <= 65535 else None
        arr = arr / scale if scale else (arr - arr.min()) * (255.0 / max(np.ptp(arr), 1.0))
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=2)
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise MediaError(
                path,
                "non-finite",
                "non-finite samples (NaN or infinity) in a float image: export it again",
            )
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=2)
    else:
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = im.convert("RGBA")
            base = Image.new("RGBA", rgba.size, (*background, 255))
            im = Image.alpha_composite(base, rgba)
        # An RGB image is read as it is: convert() would copy it once more.
        rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(np.array(rgb.transpose(2, 0, 1), order="C"))  # 3×H×W, one copy
