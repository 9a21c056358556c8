"""A model folder loaded once, predicting from files and text with no per-call set-up.

Everything a prediction needs (model in eval mode, each input's `SampleLoader` transform, the
text tokenizers) is built in the constructor; `predict` only reads the given files, stacks them
and runs one forward pass. Preprocessing is the very `SampleLoader.load` used in evaluation, so
a file gives the same tensor here as in `mmfuse evaluate`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mmfuse.data.manifest import Manifest
from mmfuse.errors import MediaError, MmfuseError
from mmfuse.features.sample import SampleLoader
from mmfuse.infer.batch import collate, sample_item
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.infer.engine import Output, forward
from mmfuse.model.ensemble import variant_base
from mmfuse.model.saved import load_model, read_saved_config


class InputError(MmfuseError, ValueError):
    """A request names an unknown input or gives nothing to predict from."""


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]
    used: list[str]  # input names that were present
    weights: dict[str, float] | None = None  # per-input fusion weights, when the method has them
    tasks: dict[str, dict] = field(default_factory=dict)  # every task: {label, probabilities}
    latency_ms: float | None = None

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "probabilities": self.probabilities,
            "modalities_used": self.used,
            "modality_weights": self.weights,
            "tasks": self.tasks,
            "latency_ms": self.latency_ms,
        }


class Predictor:
    """`Predictor("model/").predict([{"image": "a.png", "text": "a cat"}])`.

    A sample is a dict keyed by input name (the model's input names are its manifest columns)
    or, when the model has a single input of that modality, by modality. Missing inputs are
    allowed as long as one is present.
    """

    def __init__(self, model_dir: str | os.PathLike, device: str = "cpu"):
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.model, self.config, self.train_config = load_model(self.model_dir, self.device)
        self.model.eval()
        self.saved = read_saved_config(self.model_dir)
        self.names = list(self.model.names)
        self.modalities = {n: self.config.inputs[n].modality for n in self.names}
        self.specs = {n: self.model.encoders[n].input_spec for n in self.names}
        self.loader = SampleLoader(self.modalities, self.specs)
        self.labels = {h.task: list(h.classes) for h in self.config.heads}
        self.task = self.config.heads[0].task
        # A modality names an input only where it is unambiguous.
        by_modality: dict[str, list[str]] = {}
        for name, modality in self.modalities.items():
            if variant_base(name) == name:
                by_modality.setdefault(modality, []).append(name)
        self.aliases = {m: names[0] for m, names in by_modality.items() if len(names) == 1}
        # An ensemble may preprocess one field twice, for members whose encoders differ
        # (`image`, `image@<member>`): a field given once feeds both.
        self.readers = {
            n: [m for m in self.names if m == n or variant_base(m) == n] for n in self.names
        }

    def describe(self) -> dict:
        """Labels, inputs, encoders, fusion and the saved metrics, for `GET /model`."""
        metrics_file = self.model_dir / "metrics.json"
        metrics = None
        if metrics_file.is_file():
            import json

            metrics = json.loads(metrics_file.read_text()).get("metrics")
        return {
            "labels": self.labels,
            "inputs": {
                n: {
                    "column": self.config.inputs[n].column,
                    "modality": self.modalities[n],
                    "encoder": self.config.inputs[n].encoder,
                }
                for n in self.names
            },
            "fusion": self.config.fusion.name,
            "mmfuse_version": self.saved.get("mmfuse_version"),
            "metrics": metrics,
        }

    def dataset(self, manifest: Manifest) -> MultimodalDataset:
        """`manifest`'s rows as this model's unlabelled samples (evaluation transforms, and the
        decode time limit the model was trained with)."""
        timeout = (self.train_config or {}).get("decode_timeout")
        return MultimodalDataset(
            manifest, self.config.inputs, self.specs, {}, train=False, decode_timeout=timeout
        )

    def resolve(self, key: str) -> str:
        """The input name a request field refers to (an input name or a unique modality)."""
        if key in self.modalities:
            return key
        if key in self.aliases:
            return self.aliases[key]
        raise InputError(
            f"unknown input {key!r}; this model takes {self.names}"
            + (f" (or by modality: {sorted(self.aliases)})" if self.aliases else "")
        )

    def preprocess(self, sample: Mapping[str, object]) -> dict[str, object]:
        """`{input name: tensor or text}` for the present inputs; MediaError names the file."""
        out = {}
        for key, value in sample.items():
            if value is None:
                continue
            for name in self.readers[self.resolve(key)]:
                out[name] = self.loader.load(name, value)
        if not out:
            raise InputError(f"nothing to predict from: give at least one of {self.names}")
        return out

    def batch(self, samples: Sequence[Mapping[str, object]]) -> dict:
        """Preprocessed samples (`preprocess` output) → a collated batch (`inputs`, B×M `mask`);
        an absent input holds its placeholder and the mask marks it absent."""
        placeholders = self.loader.placeholders
        return collate([sample_item(s, self.names, placeholders) for s in samples])

    def predict_tensors(self, samples: Sequence[Mapping[str, object]]) -> list[Prediction]:
        """Predict from already-preprocessed samples (`preprocess` output), one forward pass."""
        start = time.perf_counter()
        batch = self.batch(samples)
        out = forward(
            self.model, batch["inputs"], batch["mask"], device=self.device, return_weights=True
        )
        took = (time.perf_counter() - start) * 1000 / max(len(samples), 1)
        return [self._prediction(out, batch["mask"], i, took) for i in range(len(samples))]

    def _prediction(self, out: Output, mask: Tensor, i: int, took: float) -> Prediction:
        tasks = {}
        for task, p in out.probabilities.items():
            classes = self.labels[task]
            tasks[task] = {
                "label": classes[int(p[i].argmax())],
                "probabilities": {c: float(p[i, k]) for k, c in enumerate(classes)},
            }
        main = tasks[self.task]
        weights = None
        if out.weights is not None:
            weights = {n: float(out.weights[i, j]) for j, n in enumerate(self.names)}
        return Prediction(
            label=main["label"],
            probabilities=main["probabilities"],
            used=[n for j, n in enumerate(self.names) if mask[i, j]],
            weights=weights,
            tasks=tasks,
            latency_ms=took,
        )

    def predict(self, samples: Sequence[Mapping[str, object]]) -> list[Prediction]:
        """Read, preprocess and predict every sample; a bad file raises MediaError."""
        start = time.perf_counter()
        prepared = [self.preprocess(s) for s in samples]
        results = self.predict_tensors(prepared)
        took = (time.perf_counter() - start) * 1000
        for r in results:
            r.latency_ms = took
        return results

    def predict_one(self, sample: Mapping[str, object]) -> Prediction:
        return self.predict([sample])[0]


__all__ = ["InputError", "MediaError", "Prediction", "Predictor"]
