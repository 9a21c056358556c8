"""Manifests, media readers and validation."""

from mmfuse.data.audio import read_audio, resample
from mmfuse.data.image import image_size, read_image
from mmfuse.data.manifest import Manifest, read_manifest
from mmfuse.data.modalities import EXTENSIONS, MODALITIES, modality_of_path, sniff
from mmfuse.data.text import read_text
from mmfuse.data.validate import Problem, Thresholds, summarize, validate
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
