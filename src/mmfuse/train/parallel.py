"""Train several models at once: each call in a spawned process with its share of the threads.

An ensemble's members and fold models are independent trainings of small models on the same
rows; one at a time, a fusion head on cached features leaves cores idle. Spawned processes
(a fresh interpreter each, as CUDA and torch's thread pools need) run `jobs` of them at once,
each with `cores // jobs` torch threads.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch


def in_processes(
    jobs: int,
    calls: Sequence[tuple[str, Callable, tuple]],
    log: Callable[[str], None],
) -> dict[str, object]:
    """`{name: fn(*args)}` for each `(name, fn, args)` (`fn` a module-level function), `jobs`
    at a time; logs `<name>: done` as each ends. A call's error is raised here."""
    threads = max(1, torch.get_num_threads() // jobs)
    log(f"training {len(calls)} models, {jobs} at a time ({threads} torch threads each)")
    context = multiprocessing.get_context("spawn")
    results = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as workers:
        futures = {workers.submit(_call, threads, fn, args): name for name, fn, args in calls}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            log(f"{futures[future]}: done")
    return results


def _call(threads: int, fn: Callable, args: tuple):
    torch.set_num_threads(threads)
    return fn(*args)


def quiet(train_config):
    """`train_config` for a worker: samples loaded in its own process (the cores are shared
    out already) and no progress bar (the parent says when it is done)."""
    from dataclasses import replace

    return replace(train_config, workers=0, progress=False)


def _silent(_: str) -> None:
    """A worker's log: its epochs are in its folder's metrics.jsonl."""


SILENT = _silent

__all__ = ["SILENT", "in_processes", "quiet"]
