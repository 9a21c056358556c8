"""Where mmfuse keeps what it can make again (feature caches, generated example data)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$MMFUSE_CACHE`, else `$XDG_CACHE_HOME/mmfuse`, else `~/.cache/mmfuse`."""
    if os.environ.get("MMFUSE_CACHE"):
        return Path(os.environ["MMFUSE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmfuse"
