"""Training: the `Trainer`, its config, the dataset it reads, the feature cache, checkpoints."""

from mmfuse.data.cache import default_cache_dir
from mmfuse.errors import CheckpointError
from mmfuse.infer.batch import collate
from mmfuse.infer.dataset import MultimodalDataset, Skipped
from mmfuse.train.cached_features import fill_feature_cache
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
from mmfuse.train.config import TrainConfig
from mmfuse.train.feature_cache import FeatureCache, content_hash, encoder_fingerprint
from mmfuse.train.nonfinite import NonFiniteLossError
from mmfuse.train.preflight import UnloadableDataError
from mmfuse.train.trainer import BadSampleError, FitResult, Trainer

__all__ = [
    "BadSampleError",
    "CheckpointError",
    "FeatureCache",
    "FitResult",
    "MultimodalDataset",
    "NonFiniteLossError",
    "Skipped",
    "TrainConfig",
    "Trainer",
    "UnloadableDataError",
    "best_checkpoint",
    "capture_rng_state",
    "collate",
    "content_hash",
    "default_cache_dir",
    "encoder_fingerprint",
    "fill_feature_cache",
    "latest_checkpoint",
    "load_checkpoint",
    "mark_best",
    "restore_rng_state",
    "save_checkpoint",
    "verify_checkpoint",
]
