"""What an encoder expects as input, per modality: plain JSON-safe dataclasses.

An encoder declares one of these (its `input_spec`); the transforms in `mmfuse.features` are built
from it, so a saved model folder rebuilds its own preprocessing from `config.json` alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class InputSpec:
    """The base of the per-modality specs: `to_dict`/`from_dict` with the modality as the key."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modality"] = self.modality
        return d

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        d = dict(d)
        modality = d.pop("modality", None)
        target = SPEC_TYPES.get(modality, cls) if cls is InputSpec else cls
        known = {f.name for f in fields(target)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown {target.__name__} field(s) {sorted(unknown)}; valid: {sorted(known)}"
            )
        # JSON turns tuples into lists; keep the declared tuple fields as tuples.
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(v)
        return target(**d)


@dataclass
class ImageSpec(InputSpec):
    modality = "image"
    size: int = 224  # square crop fed to the encoder
    resize: int | None = None  # shorter side before the crop; None → size * 8 / 7
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class AudioSpec(InputSpec):
    modality = "audio"
    sample_rate: int = 16000
    duration: float = 1.0  # seconds; clips are cropped / zero-padded to this
    feature: str = "log_mel"  # "log_mel" | "mfcc" | "waveform"
    n_fft: int = 400
    hop_length: int = 160
    win_length: int | None = None
    n_mels: int = 64
    n_mfcc: int = 20
    fmin: float = 0.0
    fmax: float | None = None
    top_db: float | None = 80.0


@dataclass
class VideoSpec(InputSpec):
    modality = "video"
    frames: int = 8
    size: int = 112
    resize: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # The audio track of the clip, when a model uses it, is described by an AudioSpec of its own.


@dataclass
class TextSpec(InputSpec):
    modality = "text"
    tokenizer: str = "hash"  # "hash" (no vocabulary to learn) or a Hugging Face path/id
    vocab_size: int = 2**16  # buckets of the hashing tokenizer
    max_length: int = 64
    lowercase: bool = True
    extra: dict = field(default_factory=dict)


@dataclass
class NumericSpec(InputSpec):
    """A number, standardised with the training split's statistics (saved with the model)."""

    modality = "numeric"
    mean: float = 0.0
    std: float = 1.0


@dataclass
class CategoricalSpec(InputSpec):
    """A category, looked up among the training split's; any other is index 0, "unknown"."""

    modality = "categorical"
    categories: tuple[str, ...] = ()  # category k has index k + 1


SPEC_TYPES: dict[str, type[InputSpec]] = {
    "image": ImageSpec,
    "audio": AudioSpec,
    "video": VideoSpec,
    "text": TextSpec,
    "numeric": NumericSpec,
    "categorical": CategoricalSpec,
}


def spec_from_dict(d: dict) -> InputSpec:
    return InputSpec.from_dict(d)
