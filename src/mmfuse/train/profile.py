"""Where an epoch's time goes (`TrainConfig.profile`, `mmfuse train --profile`).

The dataset times reading/decoding and preprocessing per sample (in the loader's workers when
there are some, where that time overlaps the model's); the loop times how long it waited for
each batch, moved it to the device, finished its preprocessing there a batch at a time (the
batched front end: log-mel, float conversion, normalisation), and ran forward, backward and the
optimiser. The model was busy for forward + backward + optimiser: that share of the epoch's wall time is what the data
path lets the model have. On CUDA each stage ends with a synchronise, so the figures are the
device's; that costs a little speed, which is why profiling is off by default. Off, `stage`
returns one shared no-op context and nothing is timed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

import torch

# The loader's stages (summed over samples, per worker process) and the loop's.
DATA_STAGES = ("read", "preprocess")
LOOP_STAGES = ("wait", "to_device", "frontend", "forward", "backward", "optimizer")
MODEL_STAGES = ("forward", "backward", "optimizer")
LABELS = {
    "read": "read/decode",
    "preprocess": "preprocess",
    "wait": "waiting for data",
    "to_device": "host→device",
    "frontend": "batched preprocessing",
    "forward": "forward",
    "backward": "backward",
    "optimizer": "optimiser",
}

_OFF = contextlib.nullcontext()


class StageClock:
    """Seconds per stage of one epoch; a disabled clock times nothing."""

    def __init__(self, enabled: bool = False, device: torch.device | None = None):
        self.enabled = enabled
        self.sync = enabled and device is not None and device.type == "cuda"
        self.seconds = dict.fromkeys(DATA_STAGES + LOOP_STAGES, 0.0)

    def stage(self, name: str):
        """A context that adds its duration to stage `name`."""
        return self._timed(name) if self.enabled else _OFF

    @contextlib.contextmanager
    def _timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - start

    def batches(self, loader: Iterable[dict]) -> Iterator[dict]:
        """The loader's batches, timing the wait for each and adding the loader's own timings."""
        if not self.enabled:
            yield from loader
            return
        it = iter(loader)
        while True:
            with self.stage("wait"):
                batch = next(it, None)
            if batch is None:
                return
            for name, seconds in batch.get("timing", {}).items():
                self.seconds[name] += seconds
            yield batch

    def record(self, wall: float) -> dict:
        """`profile_<stage>_s` per stage and `model_busy` (share of `wall`), for the epoch log."""
        out = {f"profile_{k}_s": round(v, 4) for k, v in self.seconds.items()}
        busy = sum(self.seconds[k] for k in MODEL_STAGES)
        out["model_busy"] = round(busy / wall, 4) if wall > 0 else None
        return out


def profile_line(record: dict, workers: int) -> str:
    """One readable line from `record`'s profile fields."""
    where = f"in {workers} worker(s), overlapped" if workers else "in this process"
    data = ", ".join(f"{LABELS[k]} {record[f'profile_{k}_s']:.2f} s" for k in DATA_STAGES)
    loop = ", ".join(f"{LABELS[k]} {record[f'profile_{k}_s']:.2f} s" for k in LOOP_STAGES)
    busy = record.get("model_busy")
    share = f"{busy:.0%}" if busy is not None else "n/a"
    return (
        f"  profile, epoch {record['epoch']}: loader ({where}): {data}; loop: {loop}; "
        f"model busy {share} of {record['train_time']:.2f} s"
    )
