"""Training: crash-safe checkpoints (the trainer itself builds on these)."""

from mmfuse.errors import CheckpointError
from mmfuse.train.checkpoint import (
    best_checkpoint,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    mark_best,
    restore_rng_state,
    save_checkpoint,
    verify_checkpoint,
)

__all__ = [
    "CheckpointError",
    "best_checkpoint",
    "capture_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "mark_best",
    "restore_rng_state",
    "save_checkpoint",
    "verify_checkpoint",
]
