"""Where mmfuse keeps what it can make again (feature caches, generated example data)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$MMFUSE_CACHE`, else `$XDG_CACHE_HOME/mmfuse`, else `~/.cache/mmfuse`."""
    if os.environ.get("MMFUSE_CACHE"):
        return Path(os.environ["MMFUSE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmfuse"


SPLITS = ("train", "val", "test")


def read_marker(path: Path) -> dict | None:
    """The JSON a finished generated dataset leaves behind (what made it), or None if absent or
    unreadable: then the dataset is made again."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def manifest_paths(root: Path) -> dict[str, Path]:
    """`{split: root/<split>.csv}` of a generated dataset."""
    return {split: root / f"{split}.csv" for split in SPLITS}
