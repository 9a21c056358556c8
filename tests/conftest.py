"""Shared fixtures: the generated media corpus (made once per test session, never committed)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from media_factory import make_corpus


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    # `make setup` installs these; a missing one is a broken setup, not a reason to skip.
    for tool in ("espeak-ng", "ffmpeg"):
        assert shutil.which(tool), f"{tool} is missing: run `make setup` (it apt-installs it)"
    return make_corpus(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of width-8 models: they gain nothing from more, and on a
    busy 2-core machine OpenMP's spinning threads make each tiny conv far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    # Under pytest-xdist (`make test` runs one worker per core), each worker gets one intra-op
    # thread: two workers of two threads each on two cores make OpenMP's threads spin for a core.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


# Files whose tests start processes of their own (spawned trainers, torchrun, Ray, kill and
# resume) and run longest, heaviest first. pytest-xdist hands whole files to the workers
# (`--dist loadfile`), by default those with the most tests first, which put these few-test
# files last, one worker running them while the other sat idle; `make test` keeps collection
# order (`--no-loadscope-reorder`) and these go first, the short files evening out the end.
LONGEST_FIRST = (
    "test_distributed.py",
    "test_ensemble_folds.py",
    "test_ensemble.py",
    "test_trainer.py",
    "test_ray.py",
    "test_detect_live.py",
    "test_predict_faults.py",
    "test_faults_training.py",
    "test_demo.py",
    "test_media_budgets.py",
    "test_avdigits.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
