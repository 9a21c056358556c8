"""One cell → the tensor its encoder expects: read the file, then the encoder's transform.

Training, evaluation, `mmfuse predict` and the HTTP service all go through `SampleLoader.load`,
so the same file gives the same tensor everywhere. Training and batched prediction stop at
`stage` and finish whole batches on the device (`finish_batch`, `features.batched`): the same
steps, so a sample's tensor is the same either way. Build it once and reuse it: the transforms
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
from mmfuse.data.video import probe_video, read_video
from mmfuse.features.audio_transform import AudioTransform, clip_length, fix_length
from mmfuse.features.batched import FrontEnd, Staged
from mmfuse.features.draws import RowStreams, Source, rand
from mmfuse.features.image import image_transform, resize, shorter_side_size
from mmfuse.features.tabular import CellError, tabular_transform
from mmfuse.features.video import frame_indices, video_transform

# When augmenting, a video decodes up to this many times its model's frames (its every frame
# when it has fewer) and an audio file up to this many clip lengths, so that the epoch's random
# frames and crop come from arrays the decoded-sample cache can keep.
VIDEO_POOL = 4
AUDIO_POOL = 2.0
# The modalities whose last preprocessing steps can run per batch (`stage`, `finish_batch`).
STAGED = ("image", "audio", "video")


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
        self._staged_placeholders: dict[str, Staged] = {}

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
            length = clip_length(spec)
            # A transform of its own: `.eval()` on the shared one would turn the training
            # crops and SpecAugment off for good.
            with torch.no_grad():
                return AudioTransform(spec)(torch.zeros(length))
        return ""

    def decode(self, name: str, value):
        """The part of `load` that depends on the file alone: a uint8 `3×H×W` image or `T×3×H×W`
        clip, or a float waveform, scaled down to what the transform keeps. It draws nothing
        at random, so the decoded-sample cache can store it; raises MediaError for a bad file.

        When augmenting, a video decodes a pool of up to `VIDEO_POOL × frames` evenly spaced
        frames and an audio file up to `AUDIO_POOL ×` the clip around its centre; `finish` then
        picks the epoch's frames and crop from the pool."""
        spec, modality = self.specs[name], self.modalities[name]
        if modality == "text":
            return read_text(value) if name in self.text_files else str(value)
        if modality in TABULAR:
            return value  # a cell, parsed and standardised by `finish`
        if modality == "image":
            side = spec.resize or math.ceil(spec.size * 8 / 7)
            raw = read_image(value, draft_size=(side, side))
            return shrink_shorter(raw, resize_to(spec))
        if modality == "audio":
            if self.augment:
                seconds = spec.duration * AUDIO_POOL
                return read_audio(
                    value, sample_rate=spec.sample_rate, duration=seconds, crop=0.5, pad=False
                )[0]
            raw, _ = read_audio(
                value, sample_rate=spec.sample_rate, duration=spec.duration, crop=0.5
            )
            return raw
        return self._decode_video(spec, value)

    def _decode_video(self, spec, value) -> torch.Tensor:
        info = probe_video(value)
        frames = min(spec.frames * VIDEO_POOL, info.decodable_frames) if self.augment else None
        short = resize_to(spec)
        size = decode_size(info.height, info.width, short)
        clip = read_video(value, frames or spec.frames, mode="uniform", size=size)
        # Smaller clips are scaled up here, as the transform's `ResizeShorter` would (the same
        # call), so that stored clips need no resize per epoch.
        return resize(clip.frames, shorter_side_size(*clip.frames.shape[-2:], short))  # T×C×H×W

    def finish(self, name: str, raw, generator: torch.Generator | None = None):
        """`decode`'s output → the encoder's tensor: `stage`, then the batched front end's
        steps on a batch of this one sample (`finish_batch`)."""
        modality = self.modalities[name]
        if modality == "text":
            return raw
        if modality in TABULAR:
            return self._load_tabular(name, raw, generator)
        return self.finish_batch(name, self.stage(name, raw, generator))[0]

    def stage(self, name: str, raw, generator: torch.Generator | None = None):
        """`decode`'s output → a one-row `Staged` of an image, audio or video input (other
        inputs: `finish`'s value): the random crops, frames, flips, noise and SpecAugment masks
        of this draw (from `generator`) and corruptions, but not the float conversion,
        normalisation and log-mel, which `finish_batch` does for a whole batch."""
        modality, spec = self.modalities[name], self.specs[name]
        if modality not in STAGED:
            return self.finish(name, raw, generator)
        if modality == "audio" and self.augment:
            raw = _random_clip(raw, spec, generator)
        indices = None
        if modality == "video":
            indices = frame_indices(raw.shape[0], spec.frames, self.augment, generator)
        corruption, level = self.corruptions.get(name, (None, None))
        if corruption is not None:
            raw = corruption(raw, level, generator)
        return self._stage_one(name, raw, generator, indices)

    def stage_rows(self, name: str, raws: list, streams: RowStreams) -> Staged:
        """`stage` of several decoded values of an image or video input at once, row `i`'s
        random draws from `streams` row `i`: the same rows as `stage` of each value with
        `streams.row(i)`, in one call per op when the values share a shape."""
        if not raws:
            raise ValueError("stage_rows needs at least one value")
        modality = self.modalities[name]
        if modality not in ("image", "video") or name in self.corruptions:
            raise ValueError("stage_rows stages image and video inputs without corruptions")
        if len({tuple(r.shape) for r in raws}) > 1:
            return Staged.cat([self.stage(name, r, streams.row(i)) for i, r in enumerate(raws)])
        with torch.no_grad():
            if modality == "image":
                return self.transforms[name].stage(torch.stack(raws)[:, None], streams)
            return self.transforms[name].stage(raws, streams)  # draws the frames first, as `stage`

    def _stage_one(self, name: str, raw, generator, indices=None) -> Staged:
        modality, transform = self.modalities[name], self.transforms[name]
        with torch.no_grad():
            if modality == "video":
                rows = None if indices is None else indices[None]
                return transform.stage(raw[None], generator, indices=rows)
            if modality == "image":
                return transform.stage(raw[None, None], generator)
            return transform.stage(raw[None], generator)

    def finish_batch(self, name: str, staged: Staged) -> torch.Tensor:
        """Staged rows of input `name` (`Staged.cat` of `stage`'s values) → the encoder's batch,
        computed on the device they are on."""
        with torch.no_grad():
            out = self.transforms[name].finish(staged)
        return out[:, 0] if self.modalities[name] == "image" else out  # images: n×1×C×H×W

    def staged_placeholder(self, name: str) -> Staged:
        """A `Staged` row for an absent image, audio or video input: zeros, with draws from a
        generator of its own (the front end replaces its finished row with `placeholders`)."""
        if name not in self._staged_placeholders:
            spec, modality = self.specs[name], self.modalities[name]
            if modality == "audio":
                raw = torch.zeros(clip_length(spec))
            elif modality == "image":
                raw = torch.zeros(3, spec.size, spec.size, dtype=torch.uint8)
            else:
                raw = torch.zeros(spec.frames, 3, spec.size, spec.size, dtype=torch.uint8)
            generator = torch.Generator().manual_seed(0)
            self._staged_placeholders[name] = self._stage_one(name, raw, generator)
        return self._staged_placeholders[name]

    def frontend(self) -> FrontEnd:
        """The batched front end for this loader's staged values (`finish_batch`)."""
        return FrontEnd(self.finish_batch, self.placeholders)

    def _load_tabular(self, name: str, value, generator: torch.Generator | None):
        """A numeric or categorical cell → a 1-element float tensor (CellError if unparsable)."""
        try:
            x = self.transforms[name](value)  # 1 float: standardised number, or category index
        except ValueError as e:
            raise CellError(name, str(e)) from None
        corruption, level = self.corruptions.get(name, (None, None))
        # Noise on a number is added after standardisation: its level is in training stds.
        return x if corruption is None else corruption(x, level, generator)

    def load(self, name: str, value, generator: torch.Generator | None = None):
        """Read and preprocess one cell of input `name`; raises MediaError for a bad file."""
        return self.finish(name, self.decode(name, value), generator)


def resize_to(spec) -> int:
    """The shorter side the transform resizes to before cropping."""
    return spec.resize or round(spec.size * 8 / 7)


def decode_size(height: int, width: int, short: int) -> tuple[int, int] | None:
    """(height, width) with the shorter side scaled down to `short`, the longer as
    `ResizeShorter` computes it (so the transform's resize is then the identity); None when
    the picture is no larger than that."""
    return None if min(height, width) <= short else shorter_side_size(height, width, short)


def shrink_shorter(image: torch.Tensor, short: int) -> torch.Tensor:
    """`…×H×W` uint8 with the shorter side scaled down to `short` (unchanged if no larger)."""
    size = decode_size(*image.shape[-2:], short)
    return image if size is None else resize(image, size)


def _random_clip(wave: torch.Tensor, spec, generator: Source) -> torch.Tensor:
    """`spec.duration` seconds at a random place in a decoded pool (zero-padded if shorter)."""
    length = clip_length(spec)
    place = float(rand((1,), generator, torch.device("cpu")))
    start = int(place * max(wave.shape[-1] - length, 0))
    return fix_length(wave[..., start : start + length], length)
