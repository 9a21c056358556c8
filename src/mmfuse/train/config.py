"""How to train: one JSON-safe dataclass, saved beside every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from mmfuse.device import bf16_supported
from mmfuse.model.config import ConfigError, JsonConfig

BAD_SAMPLE_POLICIES = ("skip", "error")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig(JsonConfig):
    """Optimisation, schedule, data loading, robustness options and run bookkeeping."""

    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    # Optimiser and schedule.
    optimizer: str = "adamw"  # "adamw" | "sgd" (with momentum)
    lr: float = 1e-3
    backbone_lr: float | None = None  # encoders' learning rate; None: same as lr
    weight_decay: float = 0.01
    momentum: float = 0.9
    schedule: str = "cosine"  # "cosine" | "step" | "constant"
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # "step" schedule: decay every this many epochs...
    gamma: float = 0.1  # ...by this factor
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0  # max global grad norm; None: no clipping
    # Loss.
    label_smoothing: float = 0.0
    class_weights: str | None = None  # None or "balanced" (inverse class frequency)
    # Early stopping and checkpoints.
    monitor: str = "val_accuracy"  # any key of an epoch's metrics, e.g. val_macro_f1, val_loss
    patience: int | None = None  # stop after this many epochs without improvement
    checkpoint_every: int | None = None  # also checkpoint every N optimiser steps (mid-epoch)
    # Data loading.
    # Loader processes; "auto": the cores left after this one (none for small datasets, nor on
    # a CPU of 2 cores that computes the model), kept alive from epoch to epoch, so that
    # decoding overlaps the model's compute.
    workers: int | str = "auto"
    on_bad_sample: str = "skip"  # "skip" (count, report, go on) | "error" (stop at the first)
    # Stop before training when more than this share of a split's samples cannot be loaded
    # (every sample failing always stops): such a run would learn from next to nothing.
    max_failed_share: float = 0.5
    # Stop when this many batches in a row have a non-finite loss or gradient (each is skipped,
    # its rows named in skipped.json); None: skip them and never stop.
    max_nonfinite_batches: int | None = 10
    decode_timeout: float | None = 60.0  # seconds one sample may take to decode
    cache_features: bool = True  # cache frozen encoders' features on disk
    cache_dir: str | None = None  # default: the user's cache folder
    # Keep each training file decoded (before random augmentation) on disk: epochs 2+ read it.
    decoded_cache: bool = True
    decoded_cache_max_gb: float = 20.0  # per input; over it that input decodes every epoch
    # Speed.
    # "auto": bf16 autocast with channels-last where the device has bf16 units, else fp32.
    precision: str = "auto"  # "auto" | "fp32" | "bf16" (autocast)
    channels_last: bool = False
    # Keep freed memory for reuse rather than handing it back to the system at once (glibc's
    # malloc thresholds, `train.allocator`): each step frees and reallocates the same tensors.
    keep_freed_memory: bool = True
    # Robustness training.
    augment: bool = True  # random crops/flips/jitter for images and video, random audio crops
    spec_augment: bool = True  # SpecAugment masks on log-mel/MFCC inputs (when augmenting)
    mixup_alpha: float = 0.0  # > 0: mixup of the float inputs and labels, Beta(alpha, alpha)
    fgsm_epsilon: float = 0.0  # > 0: FGSM adversarial examples on the float inputs
    # Temperature scaling per task, fitted on the validation split after training (no
    # validation split: no calibration); accuracy is unchanged, probabilities become honest.
    calibrate: bool = True
    # Logging.
    progress: bool = True
    profile: bool = False  # log each epoch's time per stage and the model's busy share
    tensorboard: bool = True  # log there too when the tensorboard package is installed
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        if self.on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ConfigError(
                f"on_bad_sample={self.on_bad_sample!r} is not one of {BAD_SAMPLE_POLICIES}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r} is not one of {PRECISIONS}")
        if self.class_weights not in (None, "balanced"):
            raise ConfigError(f"class_weights={self.class_weights!r}; use None or 'balanced'")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.workers != "auto" and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0
        ):
            raise ConfigError(
                f"workers must be 'auto' or an int >= 0 (0: load in this process), got "
                f"{self.workers!r}"
            )
        if not self.decoded_cache_max_gb > 0:
            raise ConfigError(
                f"decoded_cache_max_gb must be > 0 (decoded_cache=False turns the cache off), "
                f"got {self.decoded_cache_max_gb!r}"
            )
        if self.patience is not None:
            _positive_int("patience", self.patience)
        if self.checkpoint_every is not None:
            _positive_int("checkpoint_every", self.checkpoint_every)
        if self.max_nonfinite_batches is not None:
            _positive_int("max_nonfinite_batches", self.max_nonfinite_batches)
        share = self.max_failed_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ConfigError(
                f"max_failed_share must be a number in [0, 1] (1: stop only when every sample "
                f"fails), got {share!r}"
            )
        if self.mixup_alpha < 0 or self.fgsm_epsilon < 0:
            raise ConfigError("mixup_alpha and fgsm_epsilon must be >= 0 (0 turns them off)")

    def for_device(self, device: torch.device) -> TrainConfig:
        """This config with `precision="auto"` settled for `device` (bf16 and channels-last
        where it has bf16 units: bf16 alone is slower than fp32 for convolutions on CPUs)."""
        if self.precision != "auto":
            return self
        if bf16_supported(device):
            return replace(self, precision="bf16", channels_last=True)
        return replace(self, precision="fp32")

    @property
    def monitor_mode(self) -> str:
        """ "min" for losses, "max" for everything else (accuracy, F1, ...)."""
        return "min" if self.monitor.endswith("loss") else "max"


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
