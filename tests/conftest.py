"""Shared fixtures: the generated media corpus (made once per test session, never committed)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from media_factory import make_corpus


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    # `make setup` installs these; a missing one is a broken setup, not a reason to skip.
    for tool in ("espeak-ng", "ffmpeg"):
        assert shutil.which(tool), f"{tool} is missing: run `make setup` (it apt-installs it)"
    return make_corpus(tmp_path_factory.mktemp("media"))
