"""What a multimodal model is made of, as plain dataclasses that round-trip through JSON.

A `ModelConfig` names, per input, the manifest column it reads, the modality, the encoder and how
it trains; then the fusion method and one head per label column. It holds names and numbers only,
never live objects, so `config.json` beside the weights rebuilds the model and its preprocessing
(each encoder's `input_spec` follows from its name and options).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mmfuse.errors import MmfuseError

MODES = ("finetune", "freeze")
# A missing label in multi-task data (also torch's cross-entropy default).
IGNORE_INDEX = -100


class ConfigError(MmfuseError, ValueError):
    """A config value is wrong; the message names the field, the allowed values and the fix."""


class JsonConfig:
    """`to_dict`/`from_dict`/`save`/`from_file` for a dataclass whose fields are JSON-safe."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__} must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(known)}"
            )
        return cls(**d)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_file(cls, path: str | os.PathLike):
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        return cls.from_dict(d)


@dataclass
class InputConfig(JsonConfig):
    """One model input: a manifest column read as one modality through one encoder.

    A video column can feed two inputs, one `video` (its frames) and one `audio` (its track).
    `mode="freeze"` keeps the encoder's weights fixed (and lets the trainer cache its features);
    `finetune_after=N` keeps it frozen for the first N epochs, then trains it, the usual way to
    stop a fresh head's large early gradients from wrecking pretrained features.
    `standardize=True` scales the encoder's output per feature by the training rows' mean and
    standard deviation before fusion (the pretrained presets set it: see `model.scaler`).
    """

    column: str
    modality: str
    encoder: str
    options: dict = field(default_factory=dict)
    mode: str = "finetune"
    finetune_after: int = 0
    standardize: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"input {self.column!r}: mode={self.mode!r} is not one of {MODES}")
        if not isinstance(self.finetune_after, int) or self.finetune_after < 0:
            raise ConfigError(
                f"input {self.column!r}: finetune_after must be an int >= 0 (epochs frozen "
                f"before fine-tuning), got {self.finetune_after!r}"
            )


@dataclass
class FusionConfig(JsonConfig):
    """The fusion method (`mmfuse.fusion.available()`), its width and options."""

    name: str = "attention"
    dim: int = 256  # fused feature size; decision-level methods output class logits instead
    options: dict = field(default_factory=dict)
    modality_dropout: float = 0.0  # training only: drop each present input with this chance


@dataclass
class HeadConfig(JsonConfig):
    """A classification head for one label column (one task)."""

    task: str
    classes: list[str]
    weight: float = 1.0  # this task's weight in the joint loss
    dropout: float = 0.1
    hidden: int = 0  # 0: a linear head; >0: one hidden layer of this width

    def __post_init__(self):
        self.classes = [str(c) for c in self.classes]
        if len(self.classes) < 2:
            raise ConfigError(
                f"task {self.task!r} has {len(self.classes)} class(es) {self.classes}; a "
                "classifier needs at least 2: check the label column"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head {self.task!r}: dropout must be in [0, 1), got {self.dropout}")


@dataclass
class ModelConfig(JsonConfig):
    """Inputs keyed by name (the fusion's modality slots, in sorted order), fusion and heads."""

    inputs: dict[str, InputConfig]
    heads: list[HeadConfig]
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self):
        if not self.inputs:
            raise ConfigError("a model needs at least one input; the manifest has no media columns")
        if not self.heads:
            raise ConfigError("a model needs at least one head; give a label column (--label)")
        tasks = [h.task for h in self.heads]
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"head tasks must be unique, got {tasks}")

    @property
    def names(self) -> list[str]:
        """Input names in the fixed (sorted) order of the presence mask's columns."""
        return sorted(self.inputs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        try:
            d["inputs"] = {k: InputConfig.from_dict(v) for k, v in d["inputs"].items()}
            d["heads"] = [HeadConfig.from_dict(h) for h in d["heads"]]
        except KeyError as e:
            raise ConfigError(f"ModelConfig lacks the field {e.args[0]!r}") from None
        if "fusion" in d:
            d["fusion"] = FusionConfig.from_dict(d["fusion"])
        return super().from_dict(d)
