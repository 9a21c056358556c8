"""Per-epoch metrics to `metrics.jsonl` (one JSON object per line) and, if installed, TensorBoard."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path


class MetricsLogger:
    """Appends each epoch's record to `run_dir/metrics.jsonl` (and TensorBoard)."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; metrics.jsonl always has everything
                pass
            else:
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def rewrite(self, history: Iterable[dict]) -> None:
        """Start the file from `history` (a resumed run drops epochs the checkpoint lacks)."""
        with self.path.open("w") as f:
            for record in history:
                f.write(_line(record))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(_line(record))
        if self.writer is not None:
            step = record.get("epoch", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _line(record: dict) -> str:
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }
    return json.dumps(clean, sort_keys=False) + "\n"


class NoLogger:
    """What ranks other than 0 log to: nothing."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def epoch_line(record: dict, epochs: int) -> str:
    """The log line of an epoch's record: `epoch 3/10  train_loss 0.41  lr 0.001 ...`."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for key, value in record.items():
        if key in ("epoch", "step") or value is None:
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


def quiet(message: str) -> None:
    """A log that drops its lines (the other ranks under torchrun)."""


def progress(loader, enabled: bool, desc: str, total: int, initial: int):
    """`loader` wrapped in a tqdm bar when `enabled`."""
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, total=total, initial=initial, leave=False, unit="batch")
