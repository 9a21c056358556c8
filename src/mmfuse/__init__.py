"""mmfuse: multimodal deep learning on image, audio, video and text."""

from mmfuse.errors import ManifestError, MediaError, MmfuseError

__version__ = "0.1.0"

__all__ = ["ManifestError", "MediaError", "MmfuseError", "__version__"]
