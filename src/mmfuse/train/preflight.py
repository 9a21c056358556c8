"""Before the first step: can a split's samples be loaded at all?

A manifest whose every path is wrong (a DataFrame of paths relative to another folder, files
that are still Git LFS pointers) would otherwise train an epoch on nothing, log `train_loss
nan` and then fail with a message about the monitored metric. Missing files are counted
exactly (one stat per cell); other failures are estimated by loading up to `PROBE_ROWS` rows
spread over the split (every row, for a small one).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mmfuse.data.modalities import reads_file
from mmfuse.errors import MmfuseError
from mmfuse.infer.dataset import MultimodalDataset, Skipped

PROBE_ROWS = 32


class UnloadableDataError(MmfuseError):
    """Too many samples of a split cannot be loaded to start training."""


def check_loadable(dataset: MultimodalDataset, split: str, max_share: float) -> None:
    """Raise UnloadableDataError when every sample of `dataset`, or more than `max_share` of
    them, cannot be loaded; the message names the most common reason and an example."""
    n = len(dataset)
    if n == 0:
        return
    missing = _missing_files(dataset)
    rest = [r for r in range(n) if r not in missing]
    probe = _spread(rest, PROBE_ROWS)
    failed = [s for s in (dataset[(0, r)] for r in probe) if isinstance(s, Skipped)]
    share = (len(missing) + (len(rest) * len(failed) / len(probe) if probe else 0)) / n
    if share < 1 and share <= max_share:
        return
    exact = len(probe) == len(rest)
    records = [*missing.values(), *failed]
    raise UnloadableDataError(
        _message(dataset, split, n, share, exact, max_share, records, len(probe))
    )


def _missing_files(dataset: MultimodalDataset) -> dict[int, Skipped]:
    """Rows with a file cell whose file does not exist (cheap: no decoding)."""
    manifest = dataset.manifest
    found: dict[int, Skipped] = {}
    for name, spec in dataset.inputs.items():
        if not reads_file(spec.modality, spec.column, manifest.text_files):
            continue  # the cell is the value itself (text, a number, a category)
        for row, value in enumerate(dataset.cells[name]):
            if row in found or value is None or Path(str(value)).exists():
                continue
            found[row] = Skipped(row, spec.column, str(value), "decode", "missing", "no such file")
    return found


def _spread(rows: list[int], k: int) -> list[int]:
    """Up to `k` of `rows`, evenly spaced (all of them when there are few)."""
    if len(rows) <= k:
        return rows
    return [rows[i * len(rows) // k] for i in range(k)]


def _message(dataset, split, n, share, exact, max_share, records, probed) -> str:
    source = dataset.manifest.source
    if exact:
        count = f"{len(records)} of {n}"
    else:
        count = f"about {round(share * n)} of {n} (estimated from {probed} rows loaded)"
    limit = "" if share >= 1 else f", more than max_failed_share={max_share:g}"
    reasons = Counter(s.reason for s in records)
    reason, times = reasons.most_common(1)[0]
    example = next(s for s in records if s.reason == reason)
    where = example.path or f"row {example.row}: {example.message}"
    text = (
        f"{split} data {source}: {count} samples cannot be loaded{limit}; most common reason: "
        f"{reason} ({times} rows), e.g. {where}"
    )
    if reason == "missing":
        return text + (
            f"; relative paths resolve against {dataset.manifest.root}: if they are relative to "
            "another folder, pass root= to fit (mmfuse train --root DIR)"
        )
    return text + "; `mmfuse validate` lists every bad file: fix or remove them"
