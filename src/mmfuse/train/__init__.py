"""Training: the `Trainer`, its config, the dataset it reads, the feature cache, checkpoints."""

from typing import TYPE_CHECKING

from mmfuse.lazy import lazy_names

# Loaded on first use: `mmfuse.train.presets` and the ensemble spec are read by `mmfuse --help`,
# which should not load torch for them.
__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "mmfuse.data.cache": ["default_cache_dir"],
        "mmfuse.errors": ["CheckpointError"],
        "mmfuse.infer.batch": ["collate"],
        "mmfuse.infer.dataset": ["MultimodalDataset", "Skipped"],
        "mmfuse.train.cached_features": ["fill_feature_cache"],
        "mmfuse.train.checkpoint": ["best_checkpoint", "capture_rng_state", "latest_checkpoint",
                                    "load_checkpoint", "mark_best", "restore_rng_state",
                                    "save_checkpoint", "verify_checkpoint"],
        "mmfuse.train.config": ["TrainConfig"],
        "mmfuse.train.feature_cache": ["FeatureCache", "content_hash", "encoder_fingerprint"],
        "mmfuse.train.nonfinite": ["NonFiniteLossError"],
        "mmfuse.train.preflight": ["UnloadableDataError"],
        "mmfuse.train.trainer": ["BadSampleError", "FitResult", "Trainer"],
    },
)  # fmt: skip

if TYPE_CHECKING:
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
