"""mmfuse: multimodal deep learning on image, audio, video and text."""

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

__version__ = "0.1.0"

__all__ = [
    "Manifest",
    "ManifestError",
    "MediaError",
    "MmfuseError",
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
