"""Preprocessing built from what an encoder expects: audio features, image and video transforms.

Everything works on whole batches in torch, on the device the data is on, with random parameters
drawn once per sample from an optional `torch.Generator`.
"""

from mmfuse.features.audio import MFCC, LogMel, log_mel, mel_spectrogram, mfcc, power_to_db
from mmfuse.features.audio_augment import add_noise, spec_augment
from mmfuse.features.audio_transform import AudioTransform, audio_transform, fix_length
from mmfuse.features.image import Pipeline, image_transform
from mmfuse.features.spec import (
    SPEC_TYPES,
    AudioSpec,
    CategoricalSpec,
    ImageSpec,
    NumericSpec,
    TextSpec,
    VideoSpec,
    spec_from_dict,
)
from mmfuse.features.video import VideoTransform, frame_indices, video_transform

__all__ = [
    "MFCC",
    "SPEC_TYPES",
    "AudioSpec",
    "AudioTransform",
    "CategoricalSpec",
    "ImageSpec",
    "LogMel",
    "NumericSpec",
    "Pipeline",
    "TextSpec",
    "VideoSpec",
    "VideoTransform",
    "add_noise",
    "audio_transform",
    "fix_length",
    "frame_indices",
    "image_transform",
    "log_mel",
    "mel_spectrogram",
    "mfcc",
    "power_to_db",
    "spec_augment",
    "spec_from_dict",
    "video_transform",
]
