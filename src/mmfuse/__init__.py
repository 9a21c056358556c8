"""mmfuse: multimodal deep learning on image, audio, video and text."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmfuse._version import __version__
from mmfuse.errors import ManifestError, MediaError, MmfuseError
from mmfuse.lazy import lazy_names

__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "mmfuse.anomaly": ["AnomalyDetector"],
        "mmfuse.classifier": ["MultimodalClassifier"],
        "mmfuse.data": ["Manifest", "Problem", "probe_video", "read_audio", "read_image",
                        "read_manifest", "read_text", "read_video", "validate"],
    },
)  # fmt: skip

if TYPE_CHECKING:
    from mmfuse.anomaly import AnomalyDetector
    from mmfuse.classifier import MultimodalClassifier
    from mmfuse.data import (
        Manifest,
        Problem,
        probe_video,
        read_audio,
        read_image,
        read_manifest,
        read_text,
        read_video,
        validate,
    )

__all__ = [
    "AnomalyDetector",
    "Manifest",
    "ManifestError",
    "MediaError",
    "MmfuseError",
    "MultimodalClassifier",
    "Problem",
    "__version__",
    "probe_video",
    "read_audio",
    "read_image",
    "read_manifest",
    "read_text",
    "read_video",
    "validate",
]
