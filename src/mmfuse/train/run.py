"""One call from manifests to a trained, evaluated model with its report.

This is the code path the Python API and the `mmfuse train` command share: pick an encoder per
input column (defaults per modality), build the model from a seed, train with `Trainer`, reload
the best checkpoint, evaluate (metrics, ablation, robustness) and write the report.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mmfuse.data.manifest import Manifest
from mmfuse.data.modalities import TABULAR
from mmfuse.evaluate.evaluation import evaluate_model
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.model.config import ConfigError, FusionConfig, HeadConfig, InputConfig, ModelConfig
from mmfuse.model.multimodal import MultimodalModel
from mmfuse.train import checkpoint as ckpt
from mmfuse.train.calibrate import calibrate_model
from mmfuse.train.config import TrainConfig
from mmfuse.train.preflight import check_loadable
from mmfuse.train.presets import FAST_ENCODERS, Preset
from mmfuse.train.tabular_stats import fitted_options
from mmfuse.train.trainer import FitResult, Trainer

# The `fast` preset's encoders: what a column gets when neither a preset nor the user says.
DEFAULT_ENCODERS = FAST_ENCODERS


def model_config_for(
    manifest: Manifest,
    *,
    encoders: Mapping[str, str | Mapping | InputConfig] | None = None,
    fusion: str | FusionConfig = "attention",
    labels: list[str] | None = None,
    preset: Preset | None = None,
) -> ModelConfig:
    """A ModelConfig with one input per media column of `manifest` and one head per label.

    `encoders` maps a column (or a modality, for every column of it) to an encoder name, a dict
    of InputConfig fields (`{"encoder": "resnet18", "mode": "freeze"}`) or an InputConfig; a
    column it does not name gets its modality's encoder from `preset` (default: `fast`'s).
    A numeric or categorical input's statistics (mean and std; categories) are fitted on
    `manifest`, which must therefore be the training split, unless its options give them.
    """
    encoders = dict(encoders or {})
    unknown = sorted(set(encoders) - set(manifest.inputs) - set(DEFAULT_ENCODERS))
    if unknown:
        raise ConfigError(
            f"encoders given for {unknown}, which are neither input columns "
            f"{list(manifest.inputs)} nor modalities {sorted(DEFAULT_ENCODERS)}"
        )
    inputs = {}
    for column, modality in manifest.inputs.items():
        choice = encoders.get(column, encoders.get(modality))
        default = (preset.encoders if preset else {}).get(modality) or _fast_entry(modality)
        inputs[column] = _input_config(column, modality, choice, default)
        if modality in TABULAR:
            spec = inputs[column]
            spec.options = {**fitted_options(manifest, column, modality), **spec.options}
    labels = labels or manifest.labels
    if not labels:
        raise ConfigError(f"{manifest.source} has no label column; name one with label=...")
    heads = [HeadConfig(task, manifest.classes[task]) for task in labels]
    fusion = fusion if isinstance(fusion, FusionConfig) else FusionConfig(name=fusion)
    return ModelConfig(inputs=inputs, heads=heads, fusion=fusion)


def _fast_entry(modality: str) -> dict:
    name, options = DEFAULT_ENCODERS[modality]
    return {"encoder": name, "options": dict(options)}


def _input_config(column: str, modality: str, choice, default: dict) -> InputConfig:
    if isinstance(choice, InputConfig):
        return choice
    if choice is None:
        return InputConfig(column, modality, **copy.deepcopy(default))
    if isinstance(choice, str):
        # A named encoder gets its own defaults, not the default encoder's options.
        return InputConfig(column, modality, choice)
    fields = dict(choice)
    fields.setdefault("encoder", default["encoder"])
    if fields["encoder"] == default["encoder"]:
        # The same encoder as the preset's: the preset's settings hold where the user is silent.
        for key, value in copy.deepcopy(default).items():
            fields.setdefault(key, value)
    return InputConfig(column=column, modality=modality, **fields)


def build_model(config: ModelConfig, seed: int) -> MultimodalModel:
    """The model with weights initialised from `seed` alone."""
    torch.manual_seed(seed)
    return MultimodalModel.from_config(config)


def dataset_for(
    manifest: Manifest,
    model: MultimodalModel,
    config: ModelConfig,
    train_config: TrainConfig,
    *,
    train: bool,
) -> MultimodalDataset:
    return MultimodalDataset(
        manifest,
        config.inputs,
        {n: model.encoders[n].input_spec for n in model.names},
        {h.task: h.classes for h in config.heads},
        train=train,
        augment=train_config.augment,
        spec_augment=train_config.spec_augment,
        seed=train_config.seed,
        decode_timeout=train_config.decode_timeout,
    )


@dataclass
class TrainRun:
    model: MultimodalModel
    trainer: Trainer
    fit: FitResult
    evaluation: dict | None
    report: Path | None
    val_set: MultimodalDataset | None = None  # the validation samples, features prepared


def train_model(
    train: Manifest,
    model_config: ModelConfig,
    train_config: TrainConfig,
    out_dir: str | Path,
    *,
    val: Manifest | None = None,
    test: Manifest | None = None,
    resume: bool = False,
    evaluate: bool = True,
    ablation: bool = True,
    robustness: bool = True,
    log: Callable[[str], None] = print,
) -> TrainRun:
    """Train into `out_dir` (checkpoints, metrics.jsonl), then evaluate the best checkpoint on
    `test` (else `val`) and write `out_dir/report.md` with metrics.json and the PNGs."""
    out_dir = Path(out_dir)
    model = build_model(model_config, train_config.seed)
    trainer = Trainer(model, train_config, out_dir, model_config=model_config, log=log)
    train_set = dataset_for(train, model, model_config, train_config, train=True)
    val_set = (
        None if val is None else dataset_for(val, model, model_config, train_config, train=False)
    )
    test_set = None
    if evaluate and test is not None:
        test_set = dataset_for(test, model, model_config, train_config, train=False)
        # Checked before training (the other splits are, in fit), not after hours of it.
        check_loadable(test_set, "test", train_config.max_failed_share)
    fit = trainer.fit(train_set, val_set, resume=resume)
    # Under torchrun every rank takes part in evaluating (predictions are gathered across
    # ranks), and rank 0 alone writes the report.
    main = trainer.dist.is_main
    if fit.best_checkpoint is not None:
        ckpt.load_checkpoint(fit.best_checkpoint, model, restore_rng=False)
    if val_set is not None and train_config.calibrate:
        calibrate_model(model, trainer.predict, val_set, log if main else None)
    evaluation, report = None, None
    target = test if test is not None else val
    if evaluate and target is not None:
        eval_set = test_set if test_set is not None else val_set
        trainer.prepare_cache(eval_set)
        evaluation = evaluate_model(
            model,
            eval_set,
            out_dir if main else None,
            options=trainer.predict_options(),
            dist=trainer.dist,
            history=fit.history,
            ablation=ablation,
            robustness=robustness,
            title=f"mmfuse: {target.source}",
            extra={"checkpoint": str(fit.best_checkpoint), "best epoch": fit.best_epoch},
            log=log if main else None,
        )
        report = out_dir / "report.md" if main else None
    return TrainRun(model, trainer, fit, evaluation, report, val_set)
