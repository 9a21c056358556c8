"""Tiny shapes data and models for the trainer tests: a whole fit takes about a second on a CPU.

The same builders run in the test process and in the subprocess of the kill-and-resume test
(`RESUME_SCRIPT`), so both make the same data, model and datasets from the same seeds.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmfuse.data.manifest import Manifest, read_manifest
from mmfuse.data.synthetic import make_shapes
from mmfuse.model import FusionConfig, HeadConfig, InputConfig, ModelConfig, MultimodalModel
from mmfuse.train import MultimodalDataset, TrainConfig

# Keys of an epoch record that measure time, not training: they differ between identical runs.
TIMING_KEYS = ("train_time", "samples_per_s")

INPUT_OPTIONS = {
    "image": ("cnn", {"width": 8, "stages": 2, "image_size": 32}),
    "audio": ("mel-cnn", {"width": 8, "stages": 2, "n_mels": 32, "duration": 0.25}),
    "text": ("embedding-bag", {"dim": 16, "vocab_size": 1024}),
}

# The same encoders as InputConfig fields, for `model_config_for` and `MultimodalClassifier`.
SMALL_ENCODERS = {
    name: {"encoder": encoder, "options": dict(options)}
    for name, (encoder, options) in INPUT_OPTIONS.items()
}


def make_data(
    root: Path,
    n_per_class: int = 4,
    classes: int = 3,
    *,
    seed: int = 0,
    modalities: tuple[str, ...] = ("image", "audio", "text"),
    labels: str | list[str] | None = None,
) -> Manifest:
    """Write a shapes dataset under `root` and read its manifest back."""
    make_shapes(root, n_per_class, classes, modalities=modalities, seed=seed)
    return read_manifest(root / "manifest.csv", label=labels)


def tiny_model_config(
    classes: dict[str, list[str]],
    *,
    inputs: tuple[str, ...] = ("image", "audio", "text"),
    modes: dict[str, dict] | None = None,
    fusion: FusionConfig | None = None,
) -> ModelConfig:
    """Width-8 encoders, attention fusion of width 32, one head per task in `classes`.

    `modes` sets per-input training fields, e.g. `{"image": {"mode": "freeze"}}`.
    """
    modes = modes or {}
    specs = {}
    for name in inputs:
        encoder, options = INPUT_OPTIONS[name]
        specs[name] = InputConfig(name, name, encoder, dict(options), **modes.get(name, {}))
    return ModelConfig(
        inputs=specs,
        heads=[HeadConfig(task, names) for task, names in classes.items()],
        fusion=fusion or FusionConfig("attention", 32),
    )


def build_model(config: ModelConfig, seed: int = 0) -> MultimodalModel:
    torch.manual_seed(seed)
    return MultimodalModel.from_config(config)


def make_dataset(
    manifest: Manifest,
    config: ModelConfig,
    model: MultimodalModel,
    *,
    train: bool,
    **options,
) -> MultimodalDataset:
    """The dataset of `manifest` for `model`, with the classes of `config`'s heads."""
    specs = {n: model.encoders[n].input_spec for n in model.names}
    tasks = {h.task: h.classes for h in config.heads}
    return MultimodalDataset(manifest, config.inputs, specs, tasks, train=train, **options)


def quick_config(**overrides) -> TrainConfig:
    """A CPU config with nothing printed or written besides the run folder."""
    values = {
        "epochs": 2,
        "batch_size": 4,
        "lr": 3e-3,
        "device": "cpu",
        "progress": False,
        "tensorboard": False,
    }
    values.update(overrides)
    return TrainConfig(**values)


def state_dicts_equal(a: dict, b: dict) -> list[str]:
    """Names of the tensors that differ (or exist in one only); empty when bit-identical."""
    names = sorted(set(a) | set(b))
    return [n for n in names if n not in a or n not in b or not torch.equal(a[n], b[n])]


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def tiny_classifier(out_dir: Path, **overrides):
    """A MultimodalClassifier of the tiny encoders, quiet, on the CPU, writing to `out_dir`."""
    from mmfuse.classifier import MultimodalClassifier

    params = {
        "encoders": SMALL_ENCODERS,
        "epochs": 1,
        "batch_size": 4,
        "fusion_dim": 16,
        "device": "cpu",
        "verbose": False,
        "out_dir": out_dir,
        "train_options": {"tensorboard": False},
    }
    return MultimodalClassifier(**{**params, **overrides})


def saved_tiny_model(root: Path):
    """A tiny classifier fitted on 12 shapes rows and saved: `(model folder, a 15-row manifest
    to predict, the classifier)`."""
    make_shapes(root / "train", 4, 3, seed=0)
    make_shapes(root / "data", 5, 3, seed=1)
    clf = tiny_classifier(root / "run")
    clf.fit(root / "train" / "manifest.csv")
    clf.save(root / "model")
    return root / "model", root / "data" / "manifest.csv", clf
