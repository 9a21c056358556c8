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
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

import torch

from mmfuse.errors import MmfuseError


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
    workers = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
    try:
        futures = {workers.submit(_call, threads, fn, args): name for name, fn, args in calls}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            log(f"{futures[future]}: done")
    except BrokenProcessPool:
        raise MmfuseError(
            f"a training process of jobs={jobs} ended without a word (out of memory, killed, or "
            "a script that trains at import: put the training under `if __name__ == "
            '"__main__":`); retry with jobs=1, or resume with --resume'
        ) from None
    finally:
        # On an error, the models not started are dropped, not trained for nothing.
        workers.shutdown(wait=True, cancel_futures=True)
    return results


def _call(threads: int, fn: Callable, args: tuple):
    """`fn(*args)` with `threads` torch threads; an mmfuse error comes back as one that
    pickles (some keep only their sentence), so the parent raises the same sentence."""
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    except MmfuseError as e:
        raise MmfuseError(str(e)) from None


def quiet(train_config):
    """`train_config` for a worker: samples loaded in its own process (the cores are shared
    out already) and no progress bar (the parent says when it is done)."""
    return replace(train_config, workers=0, progress=False)


def silent(_: str) -> None:
    """A worker's log: its epochs are in its folder's metrics.jsonl."""


__all__ = ["in_processes", "quiet", "silent"]
