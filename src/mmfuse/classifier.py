"""`MultimodalClassifier`: the scikit-learn-style front door to training, prediction and saving.

    clf = MultimodalClassifier(fusion="attention", encoders={"image": "resnet18"}, epochs=10)
    clf.fit(train_df, label="label", val=val_df)    # DataFrame, manifest path or folder
    clf.predict(test_df); clf.predict_proba(test_df); clf.evaluate(test_df)
    clf.save("model/"); MultimodalClassifier.load("model/")

`__init__` only stores hyperparameters (so `get_params`, `set_params` and `sklearn.clone` work);
`fit` does the work through the same `train_model` path as `mmfuse train`; learned state ends
in `_`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from mmfuse.data.manifest import Manifest, as_manifest
from mmfuse.device import resolve_device
from mmfuse.evaluate.evaluation import evaluate_model
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.infer.embed import embed_rows
from mmfuse.infer.engine import PredictOptions, predict_dataset
from mmfuse.infer.table import predicted_labels
from mmfuse.model.config import FusionConfig, ModelConfig
from mmfuse.model.ensemble import EnsembleModel
from mmfuse.model.ensemble_folder import save_ensemble
from mmfuse.model.multimodal import MultimodalModel
from mmfuse.model.saved import load_model, read_saved_config, save_model
from mmfuse.train.config import TrainConfig
from mmfuse.train.ensemble import Member, train_ensemble
from mmfuse.train.ensemble_spec import parse_ensemble, selection_metric
from mmfuse.train.presets import Preset, default_epochs, member_encoders, resolve_preset
from mmfuse.train.run import model_config_for, train_model


class NotFittedError(ValueError, AttributeError):
    """predict/evaluate/save before fit (the same class name as scikit-learn's)."""


class MultimodalClassifier(BaseEstimator):
    """Classify samples from any mix of image, audio, video and text columns.

    Args:
        fusion: a fusion method name (`mmfuse.fusion.available()`).
        preset: "fast" (small encoders from scratch), "medium" (pretrained encoders, frozen,
            features cached) or "best" (pretrained, fine-tuned after a head warm-up); None:
            "medium" where the pretrained weights are installed, else "fast" (see
            `mmfuse.train.presets`).
        encoders: per column or modality, an encoder name or a dict of InputConfig fields, e.g.
            `{"image": "resnet18", "text": {"encoder": "hf", "mode": "freeze"}}`; they
            override the preset for those columns.
        epochs: passes over the training data; None: 10, or when every encoder is frozen (as
            with "medium": an epoch is a pass over cached features) enough for 500 optimiser
            steps, 40 to 200 epochs (`train.presets.default_epochs`).
        batch_size, lr, seed, device, workers: as in `TrainConfig`.
        fusion_dim, fusion_options, modality_dropout: as in `FusionConfig`.
        train_options: any other `TrainConfig` fields, e.g. `{"precision": "bf16"}`.
        out_dir: the run folder (checkpoints, report); default: a new temporary folder.
        verbose: print progress and per-epoch lines.
        ensemble: train several members and average their probabilities with weights chosen
            on `val`: parts such as `["fusion=attention,gated,late", "seeds=3"]` or a dict
            `{"fusion": [...], "image": ["efficientnet-lite0", "efficientnet-lite2"]}` (see
            `train.ensemble_spec`). The weights optimise log loss, or the monitor; unless 200
            labelled validation rows or more show them 4 standard errors better than equal
            ones, the members weigh the same (`"weights": "selected"` or `"equal"` to choose).
            `"folds": 5` trains each member on 5 folds of `X` and `val` pooled.
    """

    def __init__(
        self,
        fusion: str = "attention",
        preset: str | None = None,
        encoders: Mapping | None = None,
        epochs: int | None = None,
        batch_size: int = 32,
        lr: float = 1e-3,
        seed: int = 0,
        device: str = "auto",
        workers: int | str = "auto",
        fusion_dim: int = 256,
        fusion_options: Mapping | None = None,
        modality_dropout: float = 0.0,
        train_options: Mapping | None = None,
        out_dir: str | os.PathLike | None = None,
        verbose: bool = True,
        ensemble: str | list[str] | Mapping | None = None,
    ):
        self.fusion = fusion
        self.preset = preset
        self.encoders = encoders
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.device = device
        self.workers = workers
        self.fusion_dim = fusion_dim
        self.fusion_options = fusion_options
        self.modality_dropout = modality_dropout
        self.train_options = train_options
        self.out_dir = out_dir
        self.verbose = verbose
        self.ensemble = ensemble

    # ------------------------------------------------------------------ fitting
    def _train_config(self, preset: Preset, epochs: int) -> TrainConfig:
        options = {**preset.train, **dict(self.train_options or {})}
        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            device=self.device,
            workers=self.workers,
            progress=self.verbose,
            **options,
        )

    def fit(
        self,
        X,
        label: str | list[str] | None = None,
        val=None,
        *,
        modalities: Mapping[str, str] | None = None,
        resume: bool = False,
        root: str | os.PathLike | None = None,
        robustness: bool = False,
    ) -> MultimodalClassifier:
        """Train on `X` (DataFrame, manifest file or class-per-folder root); return self.

        `val` (same kinds) drives early stopping and the report; `modalities` declares column
        roles the inference gets wrong, e.g. `{"notes": "text", "id": "ignore"}`. `root` is the
        folder relative paths resolve against, for `X` and `val` alike (default: a manifest
        file's folder; the working directory for a DataFrame). `robustness` adds robustness
        curves to the report on `val`: every corruption level is a pass through the encoders,
        frozen ones included, so it costs more than the fit of a frozen preset.
        """
        train = _as_manifest(X, label, modalities, root=root)
        val_manifest = (
            None if val is None else _as_manifest(val, train.labels, modalities, root=root)
        )
        fusion = self._fusion_config(self.fusion)
        log = print if self.verbose else _quiet
        run_dir = Path(self.out_dir) if self.out_dir else Path(tempfile.mkdtemp(prefix="mmfuse-"))
        if self.ensemble is not None:
            return self._fit_ensemble(
                train, val_manifest, run_dir, resume=resume, robustness=robustness, log=log
            )
        preset = resolve_preset(
            self.preset, self._preset_modalities(train), lr=self.lr, epochs=self.epochs
        )
        for note in preset.notes:
            log(f"preset {preset.name}: {note}")
        config = model_config_for(train, encoders=self.encoders, fusion=fusion, preset=preset)
        train_config = self._train_config(preset, self._epochs_for(config, train))
        options = dict(val=val_manifest, resume=resume, robustness=robustness, log=log)
        run = train_model(train, config, train_config, run_dir, **options)
        self._set_fitted(run.model, config, train_config)
        self.preset_ = preset.name
        self.run_dir_ = run_dir
        self.history_ = run.fit.history
        self.skipped_ = run.fit.skipped
        self.evaluation_ = run.evaluation
        return self

    def _epochs_for(self, config, train: Manifest) -> int:
        return self.epochs or default_epochs(config, len(train), self.batch_size)

    def _fusion_config(self, name: str) -> FusionConfig:
        return FusionConfig(
            name=name,
            dim=self.fusion_dim,
            options=dict(self.fusion_options or {}),
            modality_dropout=self.modality_dropout,
        )

    def _fit_ensemble(
        self, train: Manifest, val, run_dir: Path, *, resume: bool, robustness: bool, log
    ):
        """`fit` of an ensemble: one member per combination of the spec, trained in turn."""
        spec = parse_ensemble(self.ensemble)
        members = []
        for plan in spec.members(self.fusion, self.preset, self.seed):
            preset = resolve_preset(
                plan.preset, self._preset_modalities(train), lr=self.lr, epochs=self.epochs
            )
            fusion = self._fusion_config(plan.fusion)
            modalities = train.inputs.values()
            encoders = member_encoders(self.encoders, preset, plan.encoders, modalities)
            config = model_config_for(train, encoders=encoders, fusion=fusion, preset=preset)
            train_config = self._train_config(preset, self._epochs_for(config, train))
            train_config.seed = plan.seed
            members.append(Member(plan.name, config, train_config))
        metric = selection_metric((self.train_options or {}).get("monitor"))
        run = train_ensemble(
            train,
            members,
            run_dir,
            val=val,
            metric=metric,
            folds=spec.folds,
            jobs=spec.jobs,
            groups=spec.groups,
            weights=spec.weights,
            resume=resume,
            robustness=robustness,
            log=log,
        )
        run.model.member_train = {m.name: m.train_config.to_dict() for m in members}
        self._set_fitted(run.model, run.config, members[0].train_config)
        self.ensemble_spec_ = spec.to_dict()
        self.weights_ = dict(run.model.weights)
        # Each member's and the ensemble's score on the validation split ({"metric", ...}).
        self.validation_ = dict(run.validation)
        self.run_dir_ = run_dir
        self.history_ = run.histories
        self.skipped_ = []
        self.evaluation_ = run.evaluation
        return self

    def _set_fitted(self, model: MultimodalModel, config: ModelConfig, train_config: TrainConfig):
        self.model_ = model
        self.model_config_ = config
        self.train_config_ = train_config
        self.labels_ = {h.task: h.classes for h in config.heads}
        self.task_ = config.heads[0].task
        self.classes_ = np.array(config.heads[0].classes, dtype=object)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                "this MultimodalClassifier is not fitted yet; call fit(...) or "
                "MultimodalClassifier.load(folder) first"
            )

    # ------------------------------------------------------------------ inference
    def _dataset(self, X) -> MultimodalDataset:
        config = self.model_config_
        roles = {spec.column: spec.modality for spec in config.inputs.values()}
        manifest = _as_manifest(X, None, roles, need_label=False)
        specs = {n: self.model_.encoders[n].input_spec for n in self.model_.names}
        return MultimodalDataset(
            manifest,
            config.inputs,
            specs,
            self.labels_,
            decode_timeout=self.train_config_.decode_timeout,
        )

    def _predict_options(self) -> PredictOptions:
        cfg = self.train_config_
        return PredictOptions(
            batch_size=cfg.batch_size,
            workers=cfg.workers,
            device=str(resolve_device(cfg.device)),
            precision=cfg.precision,
        )

    def predict_proba(self, X, task: str | None = None) -> np.ndarray:
        """N×C class probabilities (columns in `classes_` order); NaN rows could not be read."""
        self._check_fitted()
        task = task or self.task_
        dataset = self._dataset(X)
        out = predict_dataset(self.model_, dataset, self._predict_options())
        proba = np.full((len(dataset), len(self.labels_[task])), np.nan)
        proba[out["rows"]] = out["proba"]["all"][task]
        return proba

    def predict(self, X, task: str | None = None) -> np.ndarray:
        """Predicted class names; None for rows whose files could not be read."""
        task = task or getattr(self, "task_", None)
        return predicted_labels(self.predict_proba(X, task), self.labels_[task])

    def embed(self, X, level: str = "fused") -> pd.DataFrame:
        """One row per sample of `X`: the fused vector the heads take (`level="fused"`,
        columns `fused_<i>`) or each input's vector (`"inputs"`: `<input>_<i>` as its encoder
        gives it, before any standardisation, zeros where the input is absent, and
        `<input>_present`). NaN rows could not be read."""
        self._check_fitted()
        dataset = self._dataset(X)
        opt = self._predict_options()
        table = embed_rows(
            self.model_,
            dataset,
            list(range(len(dataset))),
            level,
            batch_size=opt.batch_size,
            workers=opt.workers,
            device=opt.device,
            precision=opt.precision,
        )
        return table.drop(columns=["row", "error"])

    def evaluate(
        self, X, out_dir: str | os.PathLike | None = None, *, ablation=True, robustness=False
    ) -> dict:
        """Metrics on labelled data `X` (per task when several); with `out_dir`, the report."""
        self._check_fitted()
        result = evaluate_model(
            self.model_,
            self._dataset(X),
            out_dir,
            options=self._predict_options(),
            ablation=ablation,
            robustness=robustness,
            title="mmfuse evaluation",
        )
        self.last_evaluation_ = result
        return result["metrics"]

    def _preset_modalities(self, manifest: Manifest) -> set[str]:
        """The modalities whose columns the preset chooses for: those the user names no encoder
        for (a dict without "encoder", e.g. `{"mode": "freeze"}`, keeps the preset's)."""
        chosen = {
            key
            for key, choice in (self.encoders or {}).items()
            if not isinstance(choice, Mapping) or "encoder" in choice
        }
        return {
            m for column, m in manifest.inputs.items() if column not in chosen and m not in chosen
        }

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model folder (config.json, labels.json, model.safetensors, report)."""
        self._check_fitted()
        report = getattr(self, "run_dir_", None)
        has_report = report is not None and (Path(report) / "report.md").is_file()
        if isinstance(self.model_, EnsembleModel):
            return save_ensemble(
                path,
                self.model_,
                self.model_config_,
                train_config=self.train_config_.to_dict(),
                spec=getattr(self, "ensemble_spec_", None),
                report_dir=report if has_report else None,
            )
        return save_model(
            path,
            self.model_,
            self.model_config_,
            train_config=self.train_config_.to_dict(),
            report_dir=report if has_report else None,
        )

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> MultimodalClassifier:
        model, config, train = load_model(path, device)
        train_config = TrainConfig.from_dict(train) if train else TrainConfig(device=device)
        train_config.device = device
        ensemble = read_saved_config(path).get("ensemble")
        fusion = config.fusion.name
        if ensemble:  # the members' fusion methods are in the spec; the first stands in
            fusion = next(iter(model.member_configs.values())).fusion.name
        clf = cls(
            fusion=fusion,
            epochs=train_config.epochs,
            batch_size=train_config.batch_size,
            lr=train_config.lr,
            seed=train_config.seed,
            device=device,
            workers=train_config.workers,
            fusion_dim=config.fusion.dim,
            fusion_options=config.fusion.options or None,
            modality_dropout=config.fusion.modality_dropout,
            verbose=False,
            ensemble=(ensemble or {}).get("spec"),
        )
        clf._set_fitted(model, config, train_config)
        if ensemble:
            clf.ensemble_spec_ = ensemble.get("spec")
            clf.weights_ = dict(model.weights)
        return clf


def _as_manifest(X, label, modalities, *, need_label: bool = True, root=None) -> Manifest:
    if isinstance(X, Manifest):
        return X
    manifest = as_manifest(X, label=label, modalities=modalities, root=root)
    if need_label and not manifest.labels:
        raise ValueError(f"{manifest.source}: no label column found; pass label='<column>' to fit")
    return manifest


def _quiet(message: str) -> None:
    pass
