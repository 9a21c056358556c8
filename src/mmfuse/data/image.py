"""Image reading with Pillow: any mode in, RGB uint8 `3×H×W` out."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mmfuse.data.modalities import DEFAULT_MAX_BYTES, check_file, media_errors_only, unreadable
from mmfuse.errors import MediaError

# Pillow's own guard warns at ~89 Mpx and raises at twice that; we raise at one clear limit of
# our own before any pixel is allocated, so a forged header never costs memory.
DEFAULT_MAX_PIXELS = 89_478_485


@media_errors_only("image")
def read_image(
    path: str | Path,
    *,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    background: tuple[int, int, int] = (255, 255, 255),
) -> torch.Tensor:
    """Decode an image to an RGB uint8 tensor of shape `3×H×W`.

    EXIF orientation is applied. `draft_size=(w, h)` lets JPEG decode at a reduced scale (1/2,
    1/4, 1/8) no smaller than the given size: several times faster when the model wants small
    inputs. Transparent pixels are composited onto `background`, as a viewer shows them.
    Raises `MediaError` for anything that goes wrong.
    """
    path = check_file(path, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixels(path, im.size, max_pixels)
                if draft_size is not None and im.format == "JPEG":
                    im.draft("RGB", draft_size)
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb_tensor(im, background)
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaError(path, "too-large", str(e)) from None
    except UnidentifiedImageError as e:
        raise unreadable(path, "image", e) from None
    except OSError as e:
        reason = "truncated" if "truncated" in str(e).lower() else "unreadable"
        raise MediaError(path, reason, str(e)) from None
    except (ValueError, SyntaxError, EOFError) as e:
        raise MediaError(path, "unreadable", str(e)) from None


@media_errors_only("image")
def image_size(path: str | Path, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[int, int]:
    """(width, height) from the header alone, after EXIF orientation."""
    path = check_file(path, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                orientation = im.getexif().get(0x0112, 1)
    except Image.DecompressionBombError as e:
        raise MediaError(path, "too-large", str(e)) from None
    except UnidentifiedImageError as e:
        raise unreadable(path, "image", e) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise MediaError(path, "unreadable", str(e)) from None
    # Orientations 5–8 swap width and height.
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise MediaError(
            path,
            "too-large",
            f"{w}×{h} = {w * h} pixels is over the limit of {max_pixels} "
            "(a decompression bomb or a mistaken file; raise max_pixels= if it is real)",
        )


def _to_rgb_tensor(im: Image.Image, background: tuple[int, int, int]) -> torch.Tensor:
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
        rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()  # 3×H×W
