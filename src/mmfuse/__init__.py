"""mmfuse: multimodal deep learning on image, audio, video and text."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mmfuse._version import __version__
from mmfuse.errors import ManifestError, MediaError, MmfuseError

# The public names load on first use (PEP 562): `import mmfuse.cli` runs this file, and the
# command line should not pay for the classifier and the anomaly detector (torch, scikit-learn,
# pandas) before it has parsed its arguments.
_LAZY = {
    "AnomalyDetector": "mmfuse.anomaly",
    "MultimodalClassifier": "mmfuse.classifier",
    **dict.fromkeys(
        ["Manifest", "Problem", "probe_video", "read_audio", "read_image", "read_manifest",
         "read_text", "read_video", "validate"],
        "mmfuse.data",
    ),
}  # fmt: skip

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


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'mmfuse' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
