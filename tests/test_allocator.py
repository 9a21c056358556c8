"""A training process keeps freed memory for reuse (`train.allocator`): its steps stop faulting
fresh pages in, user settings win, and `keep_freed_memory=False` leaves the allocator alone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from mmfuse.train import Trainer
from mmfuse.train import trainer as trainer_module
from train_helpers import build_model, make_data, make_dataset, quick_config, tiny_model_config

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc thresholds",
)

# Steps of a training loop in small: 24 tensors of 3 MiB made, written and freed, and made
# again; prints the page faults of the steps after the first. 72 MiB of free heap is over any
# trim threshold glibc adapts itself to (at most twice its 32 MiB mmap threshold), so without
# `keep_freed_memory` every step hands it back and faults it in again.
STEPS = """
import json, resource, sys
import torch
from mmfuse.train.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
def step():
    kept = [torch.ones(3 << 18) for _ in range(24)]
    return sum(float(t[0]) for t in kept)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def run_steps(mode: str, **env) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run(
        [sys.executable, "-c", STEPS, mode], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_kept_memory_stops_every_step_faulting_its_pages_in():
    tuned = run_steps("tuned")
    assert tuned["tuned"] is True
    # A step that hands its 18,432 pages back faults them all in again; 20 steps of reuse
    # fault a few thousand at most (measured: 1,500-5,400).
    assert tuned["faults"] < 10_000
    # Without it the same steps fault more (how often glibc trims depends on where the
    # process's mappings landed: 19,000 to 368,000 faults, measured).
    assert run_steps("plain")["faults"] > 2 * tuned["faults"]


@glibc
def test_thresholds_the_user_set_are_left_alone():
    assert run_steps("tuned", MALLOC_TRIM_THRESHOLD_="1048576")["tuned"] is False


@pytest.mark.parametrize("keep", [True, False])
def test_a_fit_keeps_freed_memory_unless_told_not_to(keep, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1))
    manifest = make_data(tmp_path / "data", 4, seed=0)
    config = tiny_model_config(manifest.classes)
    model = build_model(config, 0)
    train = make_dataset(manifest, config, model, train=True)
    cfg = quick_config(epochs=1, keep_freed_memory=keep)
    Trainer(model, cfg, tmp_path / "run", model_config=config).fit(train)
    assert calls == ([1] if keep else [])
