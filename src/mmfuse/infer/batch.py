"""One collate for training, evaluation, prediction and the export checks.

A sample item is `{"inputs": {name: tensor | str}, "present": {name: bool}}`, plus `"row"` and
`"labels"` when it comes from a manifest (`MultimodalDataset`); an absent input holds its
placeholder (zeros of the loaded shape, or ""), and the batch mask marks it absent. A `Skipped`
record (a row that could not be read) rides along in `batch["skipped"]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from mmfuse.infer.dataset import Skipped


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
    encoder tokenizes its own). A batch whose every item was skipped has only rows and skipped.
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
        values = [i["inputs"][n] for i in items]
        batch["inputs"][n] = values if isinstance(values[0], str) else torch.stack(values)
    batch["mask"] = torch.tensor(
        [[i["present"][n] for n in names] for i in items], dtype=torch.bool
    )
    tasks = sorted(items[0].get("labels", {}))
    batch["labels"] = {
        t: torch.tensor([i["labels"][t] for i in items], dtype=torch.long) for t in tasks
    }
    return batch


def batches_of(rows: Sequence[int], size: int) -> list[list[int]]:
    """`rows` cut in order into batches of `size` (the last one shorter)."""
    size = max(1, size)
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]


def row_loader(
    dataset: Dataset,
    batches: list[list[int]],
    *,
    workers: int = 0,
    seed: int | None = None,
    device: torch.device | None = None,
) -> DataLoader:
    """A DataLoader over fixed batches of rows, stacked by `collate`.

    It has a generator of its own (seeded with `seed` when given): making an iterator must not
    draw from the global RNG that dropout uses, or a resumed run would diverge from an
    uninterrupted one. Memory is pinned when the batches go to a CUDA device.
    """
    generator = torch.Generator() if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        generator=generator,
        pin_memory=device is not None and device.type == "cuda",
    )
