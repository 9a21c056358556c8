"""How much one read may decode: the limits every reader checks before it allocates.

A file's size on disk says nothing about its decoded size (a few hundred bytes of PNG can claim
65535 rows; a 1.5 MB FLAC can hold hours of silence), so each reader compares what the header
promises with these budgets first and raises `MediaError("too-large")` naming the limit and how
to raise it. The defaults let a 2 GB service decode a few requests at once; the environment
variables below change them for every reader in the process (training, `predict`, `serve`,
`validate`), a `Budgets` passed to a reader changes them for that call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from mmfuse.errors import MmfuseError

# field → environment variable that overrides its default
ENV = {
    "audio_seconds": "MMFUSE_MAX_AUDIO_SECONDS",
    "image_pixels": "MMFUSE_MAX_IMAGE_PIXELS",
    "image_aspect": "MMFUSE_MAX_IMAGE_ASPECT",
    "video_pixels": "MMFUSE_MAX_VIDEO_PIXELS",
    "validate_bytes": "MMFUSE_VALIDATE_MEMORY",
}


@dataclass(frozen=True)
class Budgets:
    """Decode limits for one read. Build with `Budgets.from_env()` to honour the variables."""

    # Seconds of audio one read decodes (a model reads its clip length; this bounds the rest).
    audio_seconds: float = 600.0
    # Pixels of one decoded image (after JPEG draft scaling), and of one video frame.
    image_pixels: int = 25_000_000
    # Longer side over shorter side: resizing the shorter side multiplies the longer one.
    image_aspect: float = 20.0
    # Frames × pixels per frame of one video read: 8 frames of 3840×2160.
    video_pixels: int = 8 * 3840 * 2160
    # Decoded bytes `validate` lets its workers hold at once (each file's share is estimated
    # from its header; a single file over it runs alone).
    validate_bytes: int = 1024**3

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise MmfuseError(f"budget {f.name}={value!r} must be a positive number")

    @classmethod
    def from_env(cls, **overrides) -> Budgets:
        """The defaults, then the environment variables, then `overrides`."""
        values = {}
        for f in fields(cls):
            raw = os.environ.get(ENV[f.name], "").strip()
            if raw:
                values[f.name] = _parse(ENV[f.name], raw, float if f.type == "float" else int)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def how_to_raise(self, name: str) -> str:
        """The advice a too-large error ends with."""
        return f"set {ENV[name]} or pass budgets=Budgets({name}=...) to raise it"


def resolve(budgets: Budgets | None) -> Budgets:
    """The budgets a reader applies: the ones passed, else the environment's."""
    return budgets if budgets is not None else Budgets.from_env()


def _parse(variable: str, raw: str, kind: type) -> float | int:
    try:
        value = kind(float(raw))
    except (ValueError, OverflowError):
        value = None
    if value is None or not value > 0:
        raise MmfuseError(
            f"{variable}={raw!r} is not a positive number; unset it or give e.g. "
            f"{variable}={getattr(Budgets, _field(variable))}"
        )
    return value


def _field(variable: str) -> str:
    return next(name for name, env in ENV.items() if env == variable)


__all__ = ["ENV", "Budgets", "resolve"]
