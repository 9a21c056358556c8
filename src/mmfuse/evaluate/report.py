"""Write an evaluation report folder: ``metrics.json``, ``report.md`` and the PNGs it links.

Input formats (:func:`mmfuse.evaluate.evaluate_model` passes exactly these, with the
trainer's per-epoch history):

``metrics``
    Either one task, the dict returned by :func:`mmfuse.evaluate.classification_metrics`, or
    several, ``{task: that dict}`` as returned by :func:`mmfuse.evaluate.multitask_metrics`.

``history``
    One dict per epoch, in order::

        [{"epoch": 1, "train_loss": 1.21, "val_loss": 1.30, "val_accuracy": 0.41}, ...]

    Keys containing ``loss`` are plotted together, other numeric keys (``val_accuracy``,
    ``val_f1_macro``...) together; ``epoch``, ``step``, ``lr`` and timing keys are not plotted.

``ablation``
    Score of the model evaluated with some modalities removed, in display order::

        {"all": 0.91, "without audio": 0.84, "without image": 0.72, "audio only": 0.55,
         "image only": 0.80}

    ``"all"`` (every modality present) is the reference the other rows are compared to.

``robustness``
    Score as one modality is corrupted more and more::

        {"audio": {"levels": [30, 20, 10, 0], "accuracy": [0.90, 0.88, 0.80, 0.61],
                   "unit": "dB SNR"},
         "image": {"levels": [0.0, 0.1, 0.3], "accuracy": [0.90, 0.85, 0.62],
                   "unit": "noise std"},
         "video": {"levels": [0, 25, 50], "accuracy": [0.90, 0.86, 0.70],
                   "unit": "frame drop %"}}

    ``levels`` and ``accuracy`` have equal length; ``unit`` labels the x axis (default
    ``"level"``).

``extra``
    Any JSON-safe context worth keeping with the numbers (checkpoint, config name, dataset,
    git commit): shown as a key/value table and stored in ``metrics.json``.

``calibration``
    Per task, the temperature and the reliability bins before and after it
    (:func:`mmfuse.evaluate.calibration.reliability_bins`)::

        {"label": {"temperature": 1.8, "before": {bins}, "after": {bins}}}

``ensemble``
    An ensemble's members scored on the same rows and their weights::

        {"members": {"attention-seed0": {metrics}, ...}, "weights": {"attention-seed0": 0.6}}

``metrics.json`` holds ``{"title", "metrics", "history"?, "ablation"?, "robustness"?,
"calibration"?, "members"?, "weights"?, "extra"?}`` with only the keys that were given; NaN
and infinity become ``null``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mmfuse.evaluate.metrics import headline_rows
from mmfuse.evaluate.plots import (
    plot_ablation,
    plot_confusion,
    plot_curves,
    plot_reliability,
    plot_robustness,
)

__all__ = ["write_report"]


def write_report(
    out_dir: str | Path,
    metrics: Mapping,
    history: Sequence[Mapping[str, float]] | None = None,
    ablation: Mapping[str, float] | None = None,
    robustness: Mapping[str, Mapping] | None = None,
    title: str = "mmfuse report",
    extra: Mapping | None = None,
    calibration: Mapping[str, Mapping] | None = None,
    ensemble: Mapping[str, Mapping] | None = None,
) -> Path:
    """Write ``metrics.json``, ``report.md`` and PNG figures into ``out_dir``.

    The formats of every argument are given in this module's docstring. Sections appear in
    ``report.md`` only for the data given. Returns the path of ``report.md``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = _split_tasks(metrics)
    if ablation is not None:
        ablation = _check_ablation(ablation)
    if robustness is not None:
        robustness = _check_robustness(robustness)
    given = {"history": history, "ablation": ablation, "robustness": robustness}
    given |= {"calibration": calibration, **dict(ensemble or {}), "extra": extra}
    payload = {"title": title, "metrics": metrics}
    payload |= {key: value for key, value in given.items() if value is not None}
    _write_json(out_dir / "metrics.json", payload)

    md = [f"# {title}", ""]
    if extra:
        md += _extra_section(extra)
    for task, task_metrics in tasks.items():
        md += _results_section(task, task_metrics, out_dir)
    if ensemble:
        md += _ensemble_section(ensemble, metrics)
    if calibration:
        md += _calibration_section(calibration, out_dir)
    if history:
        md += _history_section(history, out_dir)
    if ablation:
        md += _ablation_section(ablation, out_dir)
    if robustness:
        md += _robustness_section(robustness, out_dir)

    report = out_dir / "report.md"
    report.write_text("\n".join(md), encoding="utf-8")
    return report


def _write_json(path: Path, payload: Mapping) -> None:
    """``payload`` as plain JSON; NaN and infinity become null."""
    text = json.dumps(_jsonable(payload), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def _split_tasks(metrics: Mapping) -> dict[str | None, Mapping]:
    """``{None: metrics}`` for one task, ``{task: metrics}`` for several."""
    if "per_class" in metrics:
        return {None: metrics}
    if metrics and all(isinstance(v, Mapping) and "per_class" in v for v in metrics.values()):
        return dict(metrics)
    raise ValueError(
        "metrics must be the dict from classification_metrics() or {task: that dict} from "
        f"multitask_metrics(); got keys {sorted(map(str, metrics))[:10]}"
    )


def _extra_section(extra: Mapping) -> list[str]:
    lines = ["## Run details", "", "| key | value |", "|---|---|"]
    lines += [f"| {_cell(key)} | {_cell(_scalar_text(value))} |" for key, value in extra.items()]
    return [*lines, ""]


def _results_section(task: str | None, metrics: Mapping, out_dir: Path) -> list[str]:
    """Headline numbers, the per-class table and the confusion matrix (drawn into ``out_dir``)."""
    lines = [
        "## Results" if task is None else f"## Results: {task}",
        "",
        f"Scored samples: {metrics['n_samples']} "
        f"(rows without a true label skipped: {metrics['n_missing']})",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {_num(value)} |" for name, value in headline_rows(metrics)]
    lines += ["", "| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"| {_cell(name)} | {_num(row['precision'])} | {_num(row['recall'])} | "
            f"{_num(row['f1'])} | {row['support']} |"
        )
    image = "confusion.png" if task is None else f"confusion_{_slug(task)}.png"
    plot_confusion(
        metrics["confusion_matrix"],
        metrics["labels"],
        out_dir / image,
        title="Confusion matrix" if task is None else f"Confusion matrix: {task}",
    )
    return [*lines, "", f"![Confusion matrix]({image})", ""]


def _first_task(metrics: Mapping) -> Mapping:
    return next(iter(_split_tasks(metrics).values()))


def _ensemble_section(ensemble: Mapping[str, Mapping], metrics: Mapping) -> list[str]:
    """Each member's score (first task) and weight, then the ensemble's, on the same rows."""
    lines = [
        "## Ensemble",
        "",
        "Weights chosen on the validation split by greedy ensemble selection with replacement "
        "(Caruana et al. 2004), bagged over bootstrap resamples of the validation rows and "
        "shrunk toward equal weights as far as the rows left out support (Caruana et al. 2006); "
        "members of weight 0 are not saved.",
        "",
        "| model | weight | accuracy | log loss | ECE | ECE uncalibrated (every T = 1) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    weights = ensemble.get("weights", {})
    rows = [(name, weights.get(name, 0.0), m) for name, m in ensemble["members"].items()]
    for name, weight, m in [*rows, ("**ensemble**", sum(weights.values()), metrics)]:
        m = _first_task(m)
        lines.append(
            f"| {_cell(name)} | {weight:.3f} | {_num(m.get('accuracy'))} | "
            f"{_num(m.get('log_loss'))} | {_num(m.get('ece'))} | "
            f"{_num(m.get('ece_uncalibrated'))} |"
        )
    return [*lines, ""]


def _calibration_section(calibration: Mapping[str, Mapping], out_dir: Path) -> list[str]:
    """Per task: the temperature, ECE before and after, and the reliability diagram."""
    from mmfuse.evaluate.calibration import ECE_BINS

    lines = [
        "## Calibration",
        "",
        f"Temperature scaling fitted on the validation split; ECE over {ECE_BINS} bins.",
        "",
    ]
    for task, entry in calibration.items():
        t = entry["temperature"]
        image = f"reliability_{_slug(task)}.png" if len(calibration) > 1 else "reliability.png"
        curves = {"before (T=1)": entry["before"], f"after (T={t:.2f})": entry["after"]}
        plot_reliability(curves, out_dir / image, title=f"Reliability: {task}")
        lines += [f"**{_cell(task)}**: temperature {t:.3f}", "", f"![Reliability]({image})", ""]
    return lines


def _history_section(history: Sequence[Mapping], out_dir: Path) -> list[str]:
    """The curves, then the last epoch's numbers so the report reads without the image."""
    plot_curves(history, out_dir / "curves.png")
    lines = ["## Training curves", "", "![Training curves](curves.png)", ""]
    lines += [f"Final epoch ({len(history)} recorded):", "", "| key | value |", "|---|---:|"]
    lines += [f"| {_cell(k)} | {_scalar_text(v)} |" for k, v in history[-1].items()]
    return [*lines, ""]


def _ablation_section(ablation: Mapping[str, float], out_dir: Path) -> list[str]:
    """One row per setting with its change against ``"all"`` (blank when there is no "all")."""
    plot_ablation(ablation, out_dir / "ablation.png")
    reference = ablation.get("all")
    lines = [
        "## Modality ablation",
        "",
        "| setting | accuracy | change vs all |",
        "|---|---:|---:|",
    ]
    for setting, score in ablation.items():
        delta = "" if reference is None else f"{score - reference:+.4f}"
        lines.append(f"| {_cell(setting)} | {score:.4f} | {delta} |")
    return [*lines, "", "![Modality ablation](ablation.png)", ""]


def _robustness_section(robustness: Mapping[str, Mapping], out_dir: Path) -> list[str]:
    """One level/accuracy table per modality, then the figure with every curve."""
    curves = {m: list(zip(r["levels"], r["accuracy"])) for m, r in robustness.items()}
    units = {m: r["unit"] for m, r in robustness.items()}
    plot_robustness(curves, units, out_dir / "robustness.png")
    lines = ["## Robustness", ""]
    for modality, curve in curves.items():
        lines += [f"**{modality}**", "", f"| {_cell(units[modality])} | accuracy |", "|---:|---:|"]
        lines += [f"| {_scalar_text(level)} | {score:.4f} |" for level, score in curve]
        lines.append("")
    return [*lines, "![Robustness](robustness.png)", ""]


def _check_ablation(ablation: Mapping) -> dict[str, float]:
    checked = {}
    for setting, score in ablation.items():
        if isinstance(score, bool) or not isinstance(score, int | float | np.number):
            raise ValueError(
                f"ablation[{setting!r}] = {score!r}; expected one number per setting, e.g. "
                "{'all': 0.91, 'without audio': 0.84, 'audio only': 0.55}"
            )
        checked[str(setting)] = float(score)
    return checked


def _check_robustness(robustness: Mapping) -> dict[str, dict]:
    example = "{'audio': {'levels': [30, 10, 0], 'accuracy': [0.9, 0.8, 0.6], 'unit': 'dB SNR'}}"
    checked = {}
    for modality, entry in robustness.items():
        if not isinstance(entry, Mapping) or not {"levels", "accuracy"} <= set(entry):
            raise ValueError(
                f"robustness[{modality!r}] must be a dict with 'levels' and 'accuracy' "
                f"(and optionally 'unit'), e.g. {example}"
            )
        levels = [_plain_number(x) for x in entry["levels"]]
        accuracy = [float(x) for x in entry["accuracy"]]
        if len(levels) != len(accuracy):
            raise ValueError(
                f"robustness[{modality!r}] has {len(levels)} levels but {len(accuracy)} "
                "accuracy values; give one accuracy per level"
            )
        checked[str(modality)] = {
            "levels": levels,
            "accuracy": accuracy,
            "unit": str(entry.get("unit", "level")),
        }
    return checked


def _jsonable(value):
    """Plain JSON types all the way down; NaN/inf become None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in metrics.json")


def _plain_number(value) -> int | float:
    value = value.item() if isinstance(value, np.generic) else value
    return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


def _num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}"


def _scalar_text(value) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(_jsonable(value))
    return str(value)


def _cell(text) -> str:
    # A "|" inside a cell would split it into two columns.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "task"
