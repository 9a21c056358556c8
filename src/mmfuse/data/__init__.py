"""Manifests, media readers and validation."""

from typing import TYPE_CHECKING

from mmfuse.lazy import lazy_names

# Loaded on first use: the command line reads `mmfuse.data.budgets` to build its parser, and
# should not load torch, PyAV and pandas for it.
__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "mmfuse.data.audio": ["read_audio", "resample"],
        "mmfuse.data.image": ["image_size", "read_image"],
        "mmfuse.data.manifest": ["Manifest", "read_manifest"],
        "mmfuse.data.modalities": ["EXTENSIONS", "MODALITIES", "modality_of_path", "sniff"],
        "mmfuse.data.text": ["read_text"],
        "mmfuse.data.validation": ["Problem", "Thresholds", "summarize", "validate"],
        "mmfuse.data.video": ["VideoClip", "VideoInfo", "probe_video", "read_video",
                              "sample_times", "sliding_windows"],
    },
)  # fmt: skip

if TYPE_CHECKING:
    from mmfuse.data.audio import read_audio, resample
    from mmfuse.data.image import image_size, read_image
    from mmfuse.data.manifest import Manifest, read_manifest
    from mmfuse.data.modalities import EXTENSIONS, MODALITIES, modality_of_path, sniff
    from mmfuse.data.text import read_text
    from mmfuse.data.validation import Problem, Thresholds, summarize, validate
    from mmfuse.data.video import (
        VideoClip,
        VideoInfo,
        probe_video,
        read_video,
        sample_times,
        sliding_windows,
    )

__all__ = [
    "EXTENSIONS",
    "MODALITIES",
    "Manifest",
    "Problem",
    "Thresholds",
    "VideoClip",
    "VideoInfo",
    "image_size",
    "modality_of_path",
    "probe_video",
    "read_audio",
    "read_image",
    "read_manifest",
    "read_text",
    "read_video",
    "resample",
    "sample_times",
    "sliding_windows",
    "sniff",
    "summarize",
    "validate",
]
