"""Evaluate a trained model on a dataset: metrics, per-modality ablation, robustness, report."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mmfuse.distributed import DistInfo
from mmfuse.evaluate.ablation import ablation_scores, ablation_variants
from mmfuse.evaluate.calibration import expected_calibration_error, reliability_bins, untempered
from mmfuse.evaluate.metrics import classification_metrics
from mmfuse.evaluate.report import write_report
from mmfuse.evaluate.robustness import robustness_curves
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.infer.engine import PredictOptions, predict_dataset
from mmfuse.model.ensemble import variant_base
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

    Returns `{"metrics", "calibration", "ablation"?, "robustness"?, "members"?, "weights"?,
    "skipped"}`, with metrics per task (`{task: classification_metrics}` when there are several
    tasks, else that dict) with `ece` and `ece_uncalibrated` (before the model's temperature);
    an ensemble adds its members' metrics on the same rows and the weights. Ablation and
    robustness are for the first task. With `out_dir`, also writes the report there.
    """
    names = list(model.names)
    tasks = list(dataset.tasks)
    modalities = {n: dataset.inputs[n].modality for n in names}
    keep = _ablation_keep(names, modalities) if ablation else None

    def run(data, variants=None) -> dict:
        return predict_dataset(model, data, options, variants=variants, dist=dist)

    predictions = run(dataset, keep)
    temperatures = model.temperatures()
    raw = _uncalibrated(model, lambda: run(dataset))
    metrics = _task_metrics(predictions, dataset.tasks, temperatures, raw)
    result: dict = {
        "metrics": metrics,
        "calibration": calibration_curves(predictions, dataset.tasks, temperatures, raw),
        "skipped": [s.to_dict() for s in predictions["skipped"]],
    }
    if hasattr(model, "members"):  # an ensemble: each member scored on the same rows
        result.update(_ensemble_parts(model, dataset, options, dist))
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
        _write(out_dir, result, history=history, title=title, extra=extra)
    return result


def evaluate_probabilities(
    proba: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    tasks: Mapping[str, Sequence[str]],
    temperatures: Mapping[str, float],
    out_dir: str | Path | None = None,
    *,
    raw: Mapping[str, np.ndarray] | None = None,
    members: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    members_raw: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    weights: Mapping[str, float] | None = None,
    title: str = "mmfuse evaluation",
    extra: Mapping | None = None,
) -> dict:
    """`evaluate_model`'s result (no ablation or robustness) from probabilities already made,
    `{task: N×C}`: an ensemble's out-of-fold predictions, whose rows no single model predicted.
    `raw`: the same with calibration off; `members`: each member's probabilities, scored beside
    it with `weights` (`members_raw`: theirs with calibration off). With `out_dir`, also writes the report there."""
    predictions = {"proba": {"all": dict(proba)}, "labels": dict(labels), "skipped": []}
    before = None if raw is None else {"proba": {"all": dict(raw)}}
    result: dict = {
        "metrics": _task_metrics(predictions, tasks, temperatures, before),
        "calibration": calibration_curves(predictions, tasks, temperatures, before),
        "skipped": [],
    }
    if members is not None:
        members_raw = members_raw or {}
        result["members"] = {
            name: _task_metrics(
                {"proba": {"all": p}, "labels": labels},
                tasks,
                {},
                {"proba": {"all": members_raw[name]}} if name in members_raw else None,
            )
            for name, p in members.items()
        }
        for metrics in result["members"].values():  # a member's only temperatures are its own
            metrics.pop("ece_members_calibrated", None)
        result["weights"] = dict(weights or {})
    if out_dir is not None:
        _write(out_dir, result, history=None, title=title, extra=extra)
    return result


def _ablation_keep(names: list[str], modalities: dict[str, str]) -> dict | None:
    """`ablation_variants` of the inputs; an ensemble's `image@<member>` (the image read for
    that member) is kept or dropped with `image`."""
    bases = sorted({variant_base(n) for n in names})
    if len(bases) < 2:
        return None
    base_modalities = {variant_base(n): m for n, m in modalities.items()}
    return {
        v: {n: kept[variant_base(n)] for n in names}
        for v, kept in ablation_variants(bases, base_modalities).items()
    }


def _write(out_dir, result: dict, **kwargs) -> None:
    """The report of `evaluate_model`'s result."""
    kwargs["extra"] = {**(kwargs["extra"] or {}), "skipped rows": len(result["skipped"])}
    ensemble = {k: result[k] for k in ("members", "weights")} if "members" in result else None
    parts = {k: result.get(k) for k in ("ablation", "robustness", "calibration")}
    write_report(out_dir, result["metrics"], **kwargs, **parts, ensemble=ensemble)


def _ensemble_parts(model, dataset, options, dist) -> dict:
    """`{"members": each member's metrics on the same rows, "weights"}` of an ensemble."""
    members = {}
    for name, member in model.members.items():
        predict = functools.partial(predict_dataset, model.only(name), dataset, options, dist=dist)
        # A bag of fold models: calibration off is every fold's temperature at 1 too.
        raw = _uncalibrated(member, predict) if hasattr(member, "members") else None
        members[name] = _task_metrics(predict(), dataset.tasks, member.temperatures(), raw)
        members[name].pop("ece_members_calibrated", None)
    return {"members": members, "weights": dict(model.weights)}


def _uncalibrated(model, predict: Callable[[], dict]) -> dict | None:
    """An ensemble's predictions with every temperature at 1, its members' and its own: what it
    would predict with calibration off. None for a single model, whose one temperature
    `untempered` undoes exactly."""
    if not hasattr(model, "members"):
        return None
    parts = model.tempered_parts()
    saved = [part.temperatures() for part in parts]
    try:
        for part in parts:
            part.set_temperatures(dict.fromkeys(part.tasks, 1.0))
        return predict()
    finally:
        for part, temperatures in zip(parts, saved):
            part.set_temperatures(temperatures)


def _before(predictions, raw, task: str, temperature: float):
    """Task `task`'s probabilities before calibration: `raw`'s (an ensemble's, every
    temperature at 1) or the first variant's untempered."""
    if raw is not None:
        return raw["proba"][next(iter(raw["proba"]))][task]
    return untempered(predictions["proba"][next(iter(predictions["proba"]))][task], temperature)


def _task_metrics(
    predictions: Mapping,
    tasks: Mapping[str, Sequence[str]],
    temperatures: Mapping[str, float],
    raw: Mapping | None = None,
) -> dict:
    """`classification_metrics` of the first variant with `ece` and `ece_uncalibrated`, per
    task (the bare dict for one task). `raw`: an ensemble's predictions with calibration off;
    it adds `ece_members_calibrated` (its members calibrated, its own temperature at 1)."""
    first = next(iter(predictions["proba"]))
    per_task = {}
    for task, classes in tasks.items():
        y, proba = predictions["labels"][task], predictions["proba"][first][task]
        t = temperatures.get(task, 1.0)
        m = classification_metrics(y, proba=proba, labels=classes)
        m["ece"] = expected_calibration_error(y, proba)
        m["ece_uncalibrated"] = expected_calibration_error(y, _before(predictions, raw, task, t))
        if raw is not None:
            m["ece_members_calibrated"] = expected_calibration_error(y, untempered(proba, t))
        m["temperature"] = t
        per_task[task] = m
    return next(iter(per_task.values())) if len(per_task) == 1 else per_task


def calibration_curves(
    predictions: Mapping,
    tasks: Mapping[str, Sequence[str]],
    temperatures: Mapping[str, float],
    raw: Mapping | None = None,
) -> dict:
    """`{task: {"temperature", "before", "after"}}`: reliability bins before and after
    calibration (the model's temperature; an ensemble's `raw`: every temperature at 1), for the
    report's reliability diagram."""
    first = next(iter(predictions["proba"]))
    out = {}
    for task in tasks:
        y, proba = predictions["labels"][task], predictions["proba"][first][task]
        t = temperatures.get(task, 1.0)
        out[task] = {
            "temperature": t,
            "before": reliability_bins(y, _before(predictions, raw, task, t)),
            "after": reliability_bins(y, proba),
        }
    return out


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
