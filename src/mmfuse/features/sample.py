"""One cell → the tensor its encoder expects: read the file, then the encoder's transform.

Training, evaluation, `mmfuse predict` and the HTTP service all go through `SampleLoader.load`,
so the same file gives the same tensor everywhere. Build it once and reuse it: the transforms
(mel filterbanks included) are made in the constructor, never per call.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import torch

from mmfuse.data.audio import read_audio
from mmfuse.data.image import read_image
from mmfuse.data.modalities import TABULAR
from mmfuse.data.text import read_text
from mmfuse.data.video import read_video
from mmfuse.features._random import rand
from mmfuse.features.audio_transform import AudioTransform
from mmfuse.features.image import image_transform
from mmfuse.features.tabular import CellError, tabular_transform
from mmfuse.features.video import video_transform


class SampleLoader:
    """Per input name: its modality, encoder `input_spec` and transform.

    `modalities[name]` is the input's modality and `specs[name]` its encoder's input spec.
    `augment` turns on the random training transforms (drawn from the generator passed to
    `load`); `corruptions[name] = (corruption, level)` degrades the raw media first (robustness
    curves); `text_files` names inputs whose cells are paths of .txt files, not text.
    """

    def __init__(
        self,
        modalities: Mapping[str, str],
        specs: Mapping[str, object],
        *,
        augment: bool = False,
        spec_augment: bool = True,
        corruptions: Mapping[str, tuple] | None = None,
        text_files: Collection[str] = (),
    ):
        self.modalities = dict(modalities)
        self.specs = dict(specs)
        self.augment = augment
        self.spec_augment = spec_augment
        self.corruptions = dict(corruptions or {})
        self.text_files = frozenset(text_files)
        self.transforms = {n: self._transform(n) for n in self.modalities}
        self.placeholders = {n: self.placeholder(n) for n in self.modalities}

    def _transform(self, name: str):
        spec, modality = self.specs[name], self.modalities[name]
        if modality == "image":
            return image_transform(spec, train=self.augment)
        if modality == "video":
            return video_transform(spec, train=self.augment)
        if modality == "audio":
            masks = 2 if self.augment and self.spec_augment else 0
            return AudioTransform(spec, train=self.augment, freq_masks=masks, time_masks=masks)
        if modality in TABULAR:
            return tabular_transform(spec)
        return None  # text is tokenized per batch by its encoder

    def placeholder(self, name: str):
        """What an absent input looks like in a batch: zeros of the loaded shape (or "")."""
        spec, modality = self.specs[name], self.modalities[name]
        if modality in TABULAR:
            return torch.zeros(1)
        if modality == "image":
            return torch.zeros(3, spec.size, spec.size)
        if modality == "video":
            return torch.zeros(spec.frames, 3, spec.size, spec.size)
        if modality == "audio":
            length = round(spec.duration * spec.sample_rate)
            with torch.no_grad():
                return self.transforms[name].eval()(torch.zeros(length))
        return ""

    def _read_audio_clip(self, spec, value, generator: torch.Generator | None) -> torch.Tensor:
        """Decode only the clip the transform keeps: the centre (a random place when training)
        of a longer file, `spec.duration` seconds, so hours of audio cost one clip."""
        crop = float(rand((1,), generator, torch.device("cpu"))) if self.augment else 0.5
        raw, _ = read_audio(value, sample_rate=spec.sample_rate, duration=spec.duration, crop=crop)
        return raw

    def _load_tabular(self, name: str, value, generator: torch.Generator | None):
        try:
            x = self.transforms[name](value)  # 1 float: standardised number, or category index
        except ValueError as e:
            raise CellError(name, str(e)) from None
        corruption, level = self.corruptions.get(name, (None, None))
        # Noise on a number is added after standardisation: its level is in training stds.
        return x if corruption is None else corruption(x, level, generator)

    def load(self, name: str, value, generator: torch.Generator | None = None):
        """Read and preprocess one cell of input `name`; raises MediaError for a bad file."""
        spec, modality = self.specs[name], self.modalities[name]
        if modality == "text":
            return read_text(value) if name in self.text_files else str(value)
        if modality in TABULAR:
            return self._load_tabular(name, value, generator)
        if modality == "image":
            side = spec.resize or math.ceil(spec.size * 8 / 7)
            raw = read_image(value, draft_size=(side, side))
        elif modality == "audio":
            raw = self._read_audio_clip(spec, value, generator)
        else:
            mode = "random" if self.augment else "uniform"
            raw = read_video(value, spec.frames, mode=mode, generator=generator).frames  # T×C×H×W
        corruption, level = self.corruptions.get(name, (None, None))
        if corruption is not None:
            raw = corruption(raw, level, generator)
        transform = self.transforms[name]
        with torch.no_grad():
            if modality == "video":
                return transform(raw, generator, indices=torch.arange(raw.shape[0]))
            return transform(raw, generator)
