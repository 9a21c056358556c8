"""Fusion methods: {modality: B×D_m} features + a B×M presence mask → B×D fused features.

    from mmfuse import fusion
    fuse = fusion.build("attention", {"audio": 128, "image": 512}, output_dim=256)
    out, weights = fuse(features, mask, return_weights=True)   # B×256, B×2

Every method is registered by name (`fusion.available()`), is a plain `nn.Module`, and excludes
missing modalities exactly (see `base.py`). See docs/fusion.md for costs and when to choose each.
"""

from mmfuse.fusion.attention import AttentionFusion
from mmfuse.fusion.base import (
    FUSIONS,
    Fusion,
    available,
    build,
    from_spec,
    masked_softmax,
    register,
)
from mmfuse.fusion.concat import ConcatFusion
from mmfuse.fusion.gated import GatedFusion
from mmfuse.fusion.late import LateFusion
from mmfuse.fusion.lowrank import LowRankFusion
from mmfuse.fusion.max import MaxFusion
from mmfuse.fusion.modality_dropout import ModalityDropout, drop_modalities
from mmfuse.fusion.multichannel import MultichannelFusion
from mmfuse.fusion.tensor import TensorFusion
from mmfuse.fusion.transformer import TransformerFusion
from mmfuse.fusion.weighted import SumFusion, WeightedSumFusion

__all__ = [
    "FUSIONS",
    "AttentionFusion",
    "ConcatFusion",
    "Fusion",
    "GatedFusion",
    "LateFusion",
    "LowRankFusion",
    "MaxFusion",
    "ModalityDropout",
    "MultichannelFusion",
    "SumFusion",
    "TensorFusion",
    "TransformerFusion",
    "WeightedSumFusion",
    "available",
    "build",
    "drop_modalities",
    "from_spec",
    "masked_softmax",
    "register",
]
