"""Where a fit stands (`LoopState`) and how it is saved, resumed and marked best (`RunCheckpoints`).

A checkpoint stores the loop state as a plain dict under `extra["trainer"]` (the keys are the
fields of `LoopState`, in their order), so any checkpoint reader can still see where a run was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from mmfuse import distributed
from mmfuse.distributed import DistInfo
from mmfuse.errors import CheckpointError, MmfuseError
from mmfuse.train._ckpt_store import newest_usable, set_aside
from mmfuse.train.checkpoint import (
    best_checkpoint,
    load_checkpoint,
    mark_best,
    save_checkpoint,
)


@dataclass
class LoopState:
    """The training loop's position and bookkeeping: everything a resumed fit needs besides the
    model, optimiser, scheduler and RNGs."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # batches of epoch `epoch` already trained (a mid-epoch checkpoint), else 0
    step: int = 0  # optimiser steps taken (counting batches where no row could be loaded)
    history: list[dict] = field(default_factory=list)  # one record per finished epoch
    best: float | None = None  # best value of the monitored metric so far
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the monitored metric last improved
    skipped: list[dict] = field(default_factory=list)  # `Skipped.to_dict()`s, as of the save
    # Sums over the batches of the epoch so far (loss × rows, rows), saved mid-epoch so that a
    # resumed epoch reports the same mean train_loss as an uninterrupted one.
    epoch_loss: float = 0.0
    epoch_rows: int = 0
    # Batches in a row skipped for a non-finite loss or gradient (max_nonfinite_batches).
    nonfinite_streak: int = 0
    # The best epoch's val_loss: among epochs tied on the monitored metric (accuracy on a small
    # validation split ties often), the one with the lower loss is better.
    best_loss: float | None = None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, saved: Mapping) -> LoopState:
        # Checkpoints written before the epoch sums or the streak were saved lack them: they
        # default to 0.
        return cls(**saved)

    def pause_at(self, epoch: int, batch: int, epoch_loss: float, epoch_rows: int) -> None:
        """Mark the position of a mid-epoch checkpoint."""
        self.epoch, self.batch = epoch, batch
        self.epoch_loss, self.epoch_rows = epoch_loss, epoch_rows

    def end_epoch(self, epoch: int) -> None:
        self.pause_at(epoch + 1, 0, 0.0, 0)

    def update_best(self, record: dict, monitor: str, mode: str) -> bool:
        """Compare an epoch's record with the best so far; True when it is the new best."""
        value = record.get(monitor)
        if value is None:
            if monitor.startswith("val_") and "val_loss" not in record:
                # No validation data: keep the last epoch as the best.
                self.best_epoch = record["epoch"]
                return True
            raise MmfuseError(
                f"monitor={monitor!r} is not among the epoch metrics "
                f"{sorted(k for k in record if isinstance(record[k], float))}; set monitor to one"
            )
        loss = record.get("val_loss") if monitor != "val_loss" else None
        better = self.best is None or (value < self.best if mode == "min" else value > self.best)
        if not better and value == self.best and loss is not None:
            # A best epoch whose loss was not finite loses the tie to one whose loss is.
            held = self.best_loss
            better = held is None or not math.isfinite(held) or loss < held
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, record["epoch"], 0
            self.best_loss = loss
        else:
            self.bad_epochs += 1
        return better


@dataclass
class RunCheckpoints:
    """A run folder's checkpoints: rank 0 writes them, every rank resumes from the latest."""

    run_dir: Path
    dist: DistInfo
    generators: dict[str, torch.Generator]  # data-order and augmentation RNGs, saved by name
    config: dict  # stored as each checkpoint's config.json
    log: Callable[[str], None]

    def save(self, model, optimizer, scheduler, state: LoopState) -> Path | None:
        """Rank 0 writes the checkpoint; every rank waits until it is complete."""
        if not self.dist.is_main:
            distributed.barrier(self.dist)
            return None
        path = save_checkpoint(
            self.run_dir,
            model,
            optimizer,
            scheduler,
            epoch=state.epoch,
            step=state.step,
            best_metric=state.best,
            extra={"trainer": state.to_dict()},
            config=self.config,
            generators=self.generators,
        )
        distributed.barrier(self.dist)
        return path

    def mark_best(self, path: Path) -> None:
        mark_best(path, verify=False)  # just written and hashed by this process

    def resume(
        self, model, optimizer, scheduler, *, device, before_load: Callable[[int], None]
    ) -> LoopState | None:
        """Load the latest checkpoint into model, optimiser, scheduler and RNGs; its loop state.

        `before_load(epoch)` runs first with the saved epoch, so that encoders already
        fine-tuning at that point are trainable before their optimiser state loads.
        """
        latest = self._usable_checkpoint()
        if latest is None:
            self.log(f"--resume: no checkpoint in {self.run_dir} yet; starting from scratch")
            return None
        saved = json.loads((latest / "meta.json").read_text())
        before_load(int(saved.get("epoch", 0)))
        info = load_checkpoint(
            latest,
            model,
            optimizer,
            scheduler,
            generators=self.generators,
            map_location=device,
            verify=False,
        )
        state = LoopState.from_dict(info["extra"]["trainer"])
        self._restore_best_mark(latest, state)
        self.log(f"resumed from {latest.name}: epoch {state.epoch + 1}, batch {state.batch}")
        return state

    def _usable_checkpoint(self) -> Path | None:
        """The newest checkpoint that verifies; newer damaged ones are reported and set aside,
        and when every one is damaged the run stops rather than silently start over."""
        latest, damaged = newest_usable(self.run_dir)
        for path, err in damaged:
            self.log(f"--resume: skipping {path.name}, which is damaged: {_why(err)}")
        if latest is None and damaged:
            path, err = damaged[0]
            names = ", ".join(p.name for p, _ in damaged)
            raise CheckpointError(
                self.run_dir,
                f"--resume found no usable checkpoint ({names}: {_why(err)}) and will not start "
                "over in its place; restore the checkpoint from a copy, or train from scratch "
                "into another --out (or remove this run folder)",
            )
        # Every rank has chosen before rank 0 renames anything.
        distributed.barrier(self.dist)
        if damaged and self.dist.is_main:
            for path, _ in damaged:
                # Left in place, a damaged newer checkpoint would outrank every new save.
                self.log(f"--resume: {path.name} moved aside to {set_aside(path).name}")
        return latest

    def _restore_best_mark(self, latest: Path, state: LoopState) -> None:
        # A kill between writing an epoch's checkpoint and marking it best leaves the mark on
        # an older one; the saved state knows which epoch was best.
        best = best_checkpoint(self.run_dir)
        if (
            self.dist.is_main
            and state.batch == 0
            and state.best_epoch == state.epoch
            and (best is None or _step_of(best) != _step_of(latest))
        ):
            mark_best(latest)


def _step_of(path: Path) -> str:
    return path.name.rsplit("-", 1)[-1]


def _why(err: CheckpointError) -> str:
    # The detail's advice ("load an older checkpoint") is what resume is doing already.
    return f"{Path(err.path).name} {err.detail.split('; ')[0]}"
