"""One collate for training, evaluation, prediction and the export checks.

A sample item is `{"inputs": {name: tensor | str}, "present": {name: bool}}`, plus `"row"` and
`"labels"` when it comes from a manifest (`MultimodalDataset`); an absent input holds its
placeholder (zeros of the loaded shape, or ""), and the batch mask marks it absent. A `Skipped`
record (a row that could not be read) rides along in `batch["skipped"]`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from mmfuse.features.batched import Staged
from mmfuse.infer.dataset import Skipped

# `workers="auto"` loads in this process below this many rows.
AUTO_MIN_ROWS = 256
# Training on a CPU with this many cores or fewer, "auto" loads in the training process: a
# worker process would take its time from the model's threads (on 2 cores a default avdigits
# fit ran faster without one, its first epoch included: docs/throughput.md). Loaders that
# decode for a frozen encoder or a prediction keep their worker: there it measured faster.
CPU_ALONE_CORES = 2
# Batches each worker prepares ahead: enough to ride out one slow file (a long video).
PREFETCH = 4


def sample_item(
    sample: Mapping[str, object], names: Sequence[str], placeholders: Mapping[str, object]
) -> dict:
    """An item from `{name: preprocessed value}` of the present inputs (a served request)."""
    return {
        "inputs": {n: sample[n] if n in sample else placeholders[n] for n in names},
        "present": {n: n in sample for n in names},
    }


def collate(items: list) -> dict:
    """Stack items → `{"rows", "skipped", "inputs", "mask" (B×M bool), "labels"}`.

    Inputs are in sorted name order, as the model keeps them; text stays a list of strings (each
    encoder tokenizes its own); staged inputs (a `StagedView`'s) become one `Staged`. A batch
    whose every item was skipped has only rows and skipped.
    """
    skipped = [i for i in items if isinstance(i, Skipped)]
    items = [i for i in items if not isinstance(i, Skipped)]
    rows = [i.get("row", k) for k, i in enumerate(items)]
    batch = {"rows": torch.tensor(rows, dtype=torch.long), "skipped": skipped}
    if not items:
        return batch
    names = sorted(items[0]["inputs"])
    batch["inputs"] = {}
    for n in names:
        batch["inputs"][n] = _stack([i["inputs"][n] for i in items])
    batch["mask"] = torch.tensor(
        [[i["present"][n] for n in names] for i in items], dtype=torch.bool
    )
    tasks = sorted(items[0].get("labels", {}))
    batch["labels"] = {
        t: torch.tensor([i["labels"][t] for i in items], dtype=torch.long) for t in tasks
    }
    if "timing" in items[0]:  # a profiled dataset: seconds per stage, summed over the batch
        batch["timing"] = {k: sum(i["timing"][k] for i in items) for k in items[0]["timing"]}
    return batch


def _stack(values: list):
    if isinstance(values[0], str):
        return values
    if isinstance(values[0], Staged):  # finished per batch by the dataset's front end
        return Staged.cat(values)
    return torch.stack(values)


def batches_of(rows: Sequence[int], size: int) -> list[list[int]]:
    """`rows` cut in order into batches of `size` (the last one shorter)."""
    size = max(1, size)
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]


def auto_workers(rows: int, cores: int | None = None, *, trains_on_cpu: bool = False) -> int:
    """The loader processes `workers="auto"` means for `rows` rows: the cores left after this
    process; none for fewer than `AUTO_MIN_ROWS` rows (reading those takes about as long as
    starting a worker process), nor for a fit whose model `trains_on_cpu` of `CPU_ALONE_CORES`
    cores or fewer, where its threads already take every core."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if rows < AUTO_MIN_ROWS or (trains_on_cpu and cores <= CPU_ALONE_CORES):
        return 0
    return cores - 1


def resolve_workers(workers: int | str, rows: int, *, trains_on_cpu: bool = False) -> int:
    """`workers` as a number of processes (`"auto"`: see `auto_workers`)."""
    if workers == "auto":
        return auto_workers(rows, trains_on_cpu=trains_on_cpu)
    return int(workers)


def row_loader(
    dataset: Dataset,
    batches: Iterable[list],
    *,
    workers: int | str = 0,
    seed: int | None = None,
    device: torch.device | None = None,
) -> DataLoader:
    """A DataLoader over fixed batches of rows, stacked by `collate`.

    It has a generator of its own (seeded with `seed` when given): making an iterator must not
    draw from the global RNG that dropout uses, or a resumed run would diverge from an
    uninterrupted one. Memory is pinned when the batches go to a CUDA device. `workers="auto"`
    picks the number from the rows (`auto_workers`). `batches` may be any batch sampler, such
    as a fit's stream of every epoch's batches.
    """
    generator = torch.Generator() if seed is None else torch.Generator().manual_seed(seed)
    workers = resolve_workers(workers, len(dataset))
    extra = {"prefetch_factor": PREFETCH} if workers else {}
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        generator=generator,
        pin_memory=device is not None and device.type == "cuda",
        **extra,
    )
