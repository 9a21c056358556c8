"""mmfuse: multimodal deep learning on image, audio, video and text."""

from mmfuse._version import __version__
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
from mmfuse.errors import ManifestError, MediaError, MmfuseError

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
