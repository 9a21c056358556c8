"""Frozen per-input features of a manifest's rows, through the classifier's feature cache.

Which encoder reads a column is the preset's choice (pretrained and frozen where the weights are
installed, `train.presets`) unless the caller names one, as for `MultimodalClassifier`. A video
column feeds two inputs: its frames (`<column>`) and its audio track (`<column>_audio`), since a
surveillance clip's sound is half of what can be abnormal about it. Every encoder is frozen:
a one-class detector has no labels to train one with.

Features come from `train.cached_features.fill_feature_cache`, the classifier's path: each
file is decoded and encoded once per encoder fingerprint, and a second fit, a scoring run or
the other scorer on the same files reads the cached N×D tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from mmfuse import encoders as encoder_registry
from mmfuse.data.manifest import Manifest
from mmfuse.data.modalities import TABULAR
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.model.config import ConfigError, InputConfig
from mmfuse.train.cached_features import fill_feature_cache
from mmfuse.train.presets import resolve_preset

AUDIO_TRACK_SUFFIX = "_audio"


def input_configs(
    manifest: Manifest, encoders: Mapping | None, preset: str | None
) -> dict[str, InputConfig]:
    """`{input name: InputConfig}` for the manifest's media and text columns, every one frozen.

    `encoders` maps an input name (a column, or `<video column>_audio`) or a modality to a name
    or a dict of InputConfig fields; what it does not name gets the preset's encoder.
    """
    wanted: dict[str, tuple[str, str]] = {}  # input name → (column, modality)
    for column, modality in manifest.inputs.items():
        if modality in TABULAR:
            raise ConfigError(
                f"{manifest.source}: column {column!r} is {modality}; the anomaly detector "
                "scores image, audio, video and text inputs: drop the column from the manifest"
            )
        wanted[column] = (column, modality)
        if modality == "video":
            wanted[column + AUDIO_TRACK_SUFFIX] = (column, "audio")
    choices = dict(encoders or {})
    unknown = sorted(set(choices) - set(wanted) - set(encoder_registry.MODALITIES))
    if unknown:
        raise ConfigError(
            f"encoders given for {unknown}, which are neither inputs {sorted(wanted)} nor "
            f"modalities {sorted(encoder_registry.MODALITIES)}"
        )
    chosen = {k for k, v in choices.items() if not isinstance(v, Mapping) or "encoder" in v}
    by_preset = {m for n, (_, m) in wanted.items() if not {n, m} & chosen}
    resolved = resolve_preset(preset, by_preset, lr=1e-3, epochs=None)
    configs = {}
    for name, (column, modality) in wanted.items():
        # A track input (`video_audio`) is named by its input name or modality, not by its
        # column, which names the frames' encoder.
        choice = choices.get(name, choices.get(modality))
        fields = {"encoder": choice} if isinstance(choice, str) else dict(choice or {})
        if "encoder" not in fields:
            preset = copy.deepcopy(resolved.encoders[modality])
            # The preset's image grid tells classes apart by where strokes are, its audio
            # statistics tell voices apart; the scorers' Gaussian grows with the square of the
            # width, and docs/anomaly.md measured the plain embeddings.
            for option in ("grid", "stats"):
                preset.get("options", {}).pop(option, None)
            preset.pop("standardize", None)  # acts before a classifier's fusion: none here
            fields = {**preset, **fields}
        fields.pop("finetune_after", None)
        fields["mode"] = "freeze"
        configs[name] = InputConfig(column=column, modality=modality, **fields)
    return configs


def build_encoders(configs: Mapping[str, InputConfig]) -> dict[str, torch.nn.Module]:
    """The frozen encoders, in eval mode (pretrained weights read where their package is)."""
    built = {}
    for name, spec in configs.items():
        encoder = encoder_registry.build(spec.modality, spec.encoder, **spec.options)
        built[name] = encoder.freeze().eval()
    return built


@dataclass
class Features:
    """Per input: N×D float32 features and an N-long bool presence; per failed row, what
    failed (an input whose file cannot be read is absent from that row, not fatal)."""

    values: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    errors: dict[int, list[str]]


def extract(
    manifest: Manifest,
    configs: Mapping[str, InputConfig],
    encoders: Mapping[str, torch.nn.Module],
    *,
    cache_dir: str | None = None,
    batch_size: int = 32,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> Features:
    """Every row's features per input, from the feature cache where it holds them."""
    specs = {n: encoders[n].input_spec for n in configs}
    dataset = MultimodalDataset(manifest, configs, specs, {})
    values, present, errors = {}, {}, {}
    for name, spec in configs.items():
        feats, failed = fill_feature_cache(
            dataset,
            name,
            encoders[name],
            cache_dir=cache_dir,
            batch_size=batch_size,
            workers=workers,
            device=device,
            progress=progress,
        )
        mask = np.array([manifest.value(r, spec.column) is not None for r in range(len(manifest))])
        mask[list(failed)] = False
        values[name] = feats.numpy().astype(np.float32)
        present[name] = mask
        for row, skipped in failed.items():
            errors.setdefault(row, []).append(f"{name}: {skipped}")
    return Features(values, present, errors)
