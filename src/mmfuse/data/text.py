"""Text: plain strings from the manifest, or the contents of `.txt` files."""

from __future__ import annotations

from pathlib import Path

from mmfuse.data.modalities import check_file
from mmfuse.errors import MediaError

# A caption or transcript; anything bigger is almost certainly the wrong file.
DEFAULT_MAX_TEXT_BYTES = 10 * 1024**2


def read_text(path: str | Path, *, max_bytes: int | None = DEFAULT_MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a `.txt` file, stripped of surrounding whitespace."""
    path = check_file(path, max_bytes)
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise MediaError(
            path, "unreadable", f"not UTF-8 text: {e.reason} at byte {e.start}"
        ) from None
    except OSError as e:
        raise MediaError(path, "unreadable", str(e)) from None
