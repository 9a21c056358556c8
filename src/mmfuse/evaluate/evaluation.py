"""Evaluate a trained model on a dataset: metrics, per-modality ablation, robustness, report."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mmfuse.distributed import DistInfo
from mmfuse.evaluate.ablation import ablation_scores, ablation_variants
from mmfuse.evaluate.metrics import classification_metrics
from mmfuse.evaluate.report import write_report
from mmfuse.evaluate.robustness import robustness_curves
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.infer.engine import PredictOptions, predict_dataset
from mmfuse.model.multimodal import MultimodalModel


def evaluate_model(
    model: MultimodalModel,
    dataset: MultimodalDataset,
    out_dir: str | Path | None = None,
    *,
    options: PredictOptions | None = None,
    dist: DistInfo | None = None,
    history: Sequence[Mapping] | None = None,
    ablation: bool = True,
    robustness: bool = True,
    title: str = "mmfuse evaluation",
    extra: Mapping | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Score `model` on `dataset` (a `MultimodalDataset` in eval mode), predicting through
    `infer.engine.predict_dataset` with `options` (and across ranks under torchrun: `dist`).

    Returns `{"metrics", "ablation"?, "robustness"?, "skipped"}`, with metrics per task
    (`{task: classification_metrics}` when there are several tasks, else that dict). Ablation
    and robustness are for the first task. With `out_dir`, also writes report.md, metrics.json
    and the PNGs there.
    """
    names = list(model.names)
    tasks = list(dataset.tasks)
    modalities = {n: dataset.inputs[n].modality for n in names}
    keep = ablation_variants(names, modalities) if ablation and len(names) > 1 else None

    def run(data, variants=None) -> dict:
        return predict_dataset(model, data, options, variants=variants, dist=dist)

    predictions = run(dataset, keep)
    metrics = _task_metrics(predictions, dataset.tasks)
    result: dict = {"metrics": metrics, "skipped": [s.to_dict() for s in predictions["skipped"]]}
    if keep is not None:
        result["ablation"] = ablation_scores(predictions, tasks[0])
    if robustness:

        def predict(corruptions):
            if not corruptions:
                return predictions
            if log:
                ((name, (corruption, level)),) = corruptions.items()
                log(f"robustness: {name} {corruption.name} at {level:g}")
            return run(corrupted(dataset, corruptions))

        curves = robustness_curves(predict, modalities, tasks[0])
        if curves:
            result["robustness"] = curves
    if out_dir is not None:
        extra = {**(extra or {}), "skipped rows": len(result["skipped"])}
        write_report(
            out_dir,
            metrics,
            history=history,
            title=title,
            extra=extra,
            **{k: result.get(k) for k in ("ablation", "robustness")},
        )
    return result


def _task_metrics(predictions: Mapping, tasks: Mapping[str, Sequence[str]]) -> dict:
    """`classification_metrics` of the first variant, per task (the bare dict for one task)."""
    first = next(iter(predictions["proba"]))
    per_task = {
        task: classification_metrics(
            predictions["labels"][task], proba=predictions["proba"][first][task], labels=classes
        )
        for task, classes in tasks.items()
    }
    return next(iter(per_task.values())) if len(per_task) == 1 else per_task


def corrupted(dataset, corruptions: Mapping[str, tuple]):
    """The same rows in eval mode with `corruptions` applied; cached features of the inputs
    left clean are reused, so only the corrupted input is decoded and encoded again."""
    return MultimodalDataset(
        dataset.manifest,
        dataset.inputs,
        dataset.specs,
        dataset.tasks,
        train=False,
        seed=dataset.seed,
        decode_timeout=dataset.decode_timeout,
        corruptions=corruptions,
        features={n: f for n, f in dataset.features.items() if n not in corruptions},
        feature_errors={n: e for n, e in dataset.feature_errors.items() if n not in corruptions},
    )
