"""Batches whose loss is not finite: which rows to name, what to log, when to give up.

`train_step` leaves such a batch out without touching the weights. This module names the rows:
those whose inputs hold NaN or Inf (a float WAV or TIFF that got past the readers, a cached
feature that overflowed), or, when every input is finite (the model diverged, or a finite but
absurd sample overflowed inside it), every row of the batch. After `max_nonfinite_batches`
such batches in a row, training stops: by then it is the data or the learning rate, not chance.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from mmfuse.data.modalities import reads_file
from mmfuse.errors import MmfuseError
from mmfuse.features.batched import Staged
from mmfuse.infer.dataset import MultimodalDataset, Skipped
from mmfuse.train.config import TrainConfig
from mmfuse.train.skipped import note_skipped
from mmfuse.train.step import StepResult

_SKIPPED_STEP = "its batch was left out of the optimiser step"


class NonFiniteLossError(MmfuseError):
    """Too many batches in a row had a non-finite loss or gradient."""


def blame(batch: dict, dataset: MultimodalDataset, why: str) -> tuple[list[Skipped], bool]:
    """Records for the rows of a skipped batch, and whether they are rows with NaN/Inf inputs
    (True) or simply every row of the batch (False: no input was at fault)."""
    rows = batch["rows"].tolist()
    records = []
    for name, x in sorted(batch["inputs"].items()):
        if isinstance(x, Staged):
            x = x.data  # a waveform that holds NaN held it before the front end too
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            continue  # text: token ids are made later and cannot be NaN
        bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)  # B
        for i in bad.nonzero().flatten().tolist():
            message = f"NaN or Inf in its preprocessed {name!r} input ({why}); {_SKIPPED_STEP}"
            records.append(_record(dataset, rows[i], name, "non-finite", message))
    if records:
        return records, True
    listed = ", ".join(map(str, rows))
    message = f"{why} for the batch of rows {listed} (no input holds NaN or Inf); {_SKIPPED_STEP}"
    return [Skipped(r, None, None, "train", "non-finite-loss", message) for r in rows], False


def _record(dataset: MultimodalDataset, row: int, name: str, reason: str, message: str):
    spec = dataset.inputs[name]
    value = dataset.manifest.value(row, spec.column)
    is_file = reads_file(spec.modality, spec.column, dataset.manifest.text_files)
    path = str(value) if is_file and value is not None else None
    return Skipped(row, spec.column, path, "train", reason, message)


def skip_nonfinite(
    skipped: list[Skipped],
    batch: dict,
    dataset: MultimodalDataset,
    where: str,
    step: StepResult,
    *,
    config: TrainConfig,
    log: Callable[[str], None],
) -> None:
    """Note and log the rows of a batch `train_step` did not step on (under DDP, when the
    fault was in another process's part of the batch, that process names its own rows)."""
    why = step.why
    if step.elsewhere:
        log(f"{where}: {why}, so the batch was skipped; that process names its rows")
        return
    records, blamed = blame(batch, dataset, why)
    # A row whose own input is NaN is a bad sample (on_bad_sample applies); a diverged model
    # is not the fault of the rows that happened to be in the batch.
    note_skipped(skipped, records, config.on_bad_sample if blamed else "skip")
    if blamed:
        named = ", ".join(f"row {s.row} ({s.column}: {s.path or 'text'})" for s in records[:5])
        more = f" and {len(records) - 5} more" if len(records) > 5 else ""
        log(f"{where}: {why}, so the batch was skipped; NaN or Inf inputs in {named}{more}")
    else:
        rows = ", ".join(str(s.row) for s in records)
        log(f"{where}: {why}, so the batch (rows {rows}) was skipped; no input holds NaN or Inf")


def stop_error(streak: int, where: str, why: str, run_dir: Path, lr: float) -> NonFiniteLossError:
    """The one-sentence error that ends a run after `streak` skipped batches in a row."""
    return NonFiniteLossError(
        f"training stopped at {where}: {streak} batches in a row were skipped because the loss "
        f"or gradient was not finite (last: {why}); the rows are listed in "
        f"{run_dir / 'skipped.json'}: fix or remove those samples, lower the learning rate "
        f"(now {lr:g}), or raise max_nonfinite_batches"
    )
