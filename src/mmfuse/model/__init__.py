"""The multimodal model and its JSON config.

>>> from mmfuse.model import ModelConfig, InputConfig, HeadConfig, MultimodalModel
>>> cfg = ModelConfig(
...     inputs={"image": InputConfig("image", "image", "cnn", {"width": 8, "stages": 2})},
...     heads=[HeadConfig("label", ["cat", "dog"])],
... )
>>> model = MultimodalModel.from_config(cfg)
"""

from typing import TYPE_CHECKING

from mmfuse.lazy import lazy_names

# Loaded on first use: the config classes need no torch, and `mmfuse --help` reads them.
__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "mmfuse.model.config": ["ConfigError", "FusionConfig", "HeadConfig", "InputConfig",
                                "JsonConfig", "ModelConfig"],
        "mmfuse.model.heads": ["ClassifierHead"],
        "mmfuse.model.multimodal": ["MultimodalModel"],
        "mmfuse.model.scaler": ["FeatureScaler"],
    },
)  # fmt: skip

if TYPE_CHECKING:
    from mmfuse.model.config import (
        ConfigError,
        FusionConfig,
        HeadConfig,
        InputConfig,
        JsonConfig,
        ModelConfig,
    )
    from mmfuse.model.heads import ClassifierHead
    from mmfuse.model.multimodal import MultimodalModel
    from mmfuse.model.scaler import FeatureScaler

__all__ = [
    "ClassifierHead",
    "ConfigError",
    "FeatureScaler",
    "FusionConfig",
    "HeadConfig",
    "InputConfig",
    "JsonConfig",
    "ModelConfig",
    "MultimodalModel",
]
