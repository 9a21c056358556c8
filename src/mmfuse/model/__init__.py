"""The multimodal model and its JSON config.

>>> from mmfuse.model import ModelConfig, InputConfig, HeadConfig, MultimodalModel
>>> cfg = ModelConfig(
...     inputs={"image": InputConfig("image", "image", "cnn", {"width": 8, "stages": 2})},
...     heads=[HeadConfig("label", ["cat", "dog"])],
... )
>>> model = MultimodalModel.from_config(cfg)
"""

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
