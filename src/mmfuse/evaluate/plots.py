"""Evaluation figures saved as PNG files.

Figures are built with ``matplotlib.figure.Figure`` on an explicit ``FigureCanvasAgg`` and never
through ``pyplot``: pyplot keeps global state (the current figure, the selected backend), and
touching it from a library would switch a user's notebook backend or leak open figures in a
long training run. Each function takes plain Python data, writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "plot_ablation",
    "plot_confusion",
    "plot_curves",
    "plot_reliability",
    "plot_robustness",
    "plot_roc",
]

_DPI = 110
# Beyond this many classes the cell numbers become unreadable noise; colour alone is clearer.
_MAX_ANNOTATED_CLASSES = 30
# Keys of a history row that are bookkeeping, not curves worth plotting against accuracy.
_NOT_A_CURVE = {"epoch", "step", "lr", "learning_rate", "time", "seconds", "elapsed"}


def plot_confusion(
    cm: Sequence[Sequence[int]],
    labels: Sequence[str],
    path: str | Path,
    *,
    title: str = "Confusion matrix",
) -> Path:
    """Draw a C×C confusion matrix (rows = true class, columns = predicted class).

    Cells are coloured by the fraction of their row, so rare classes are as visible as common
    ones, and labelled with the raw count (and the row percentage for up to 12 classes).
    """
    counts = np.asarray(cm, dtype=np.int64)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"cm has shape {counts.shape}; expected ({n}, {n}) for {n} labels")
    row_totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)

    side = min(24.0, max(5.0, 0.6 * n + 2.5))
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")

    font = max(5, min(11, int(120 / max(n, 1))))
    ax.set_xticks(range(n), labels=[str(name) for name in labels], rotation=45, ha="right")
    ax.set_yticks(range(n), labels=[str(name) for name in labels])
    ax.tick_params(labelsize=max(font, 7))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)

    if n <= _MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                text = str(counts[i, j])
                if n <= 12 and row_totals[i, 0] > 0:
                    text += f"\n{fractions[i, j]:.0%}"
                color = "white" if fractions[i, j] > 0.55 else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=font)
    return _save(fig, path)


def plot_curves(
    history: Sequence[Mapping[str, float]],
    path: str | Path,
    *,
    title: str = "Training curves",
) -> Path:
    """Plot per-epoch training history.

    Args:
        history: one dict per epoch, e.g.
            ``[{"epoch": 1, "train_loss": 1.2, "val_loss": 1.3, "val_accuracy": 0.41}, ...]``.
            Keys containing ``loss`` share the left panel; other numeric keys (accuracy, F1...)
            share the right panel; ``epoch``/``step``/``lr``/timing keys are not plotted. A key
            may be absent from some epochs (validation every few epochs) and is drawn where present.
            Without an ``epoch`` key, rows are numbered from 1.
    """
    if not history:
        raise ValueError("history is empty; pass at least one per-epoch dict")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    keys: list[str] = []
    for row in history:
        for key, value in row.items():
            if key not in keys and key not in _NOT_A_CURVE and _is_number(value):
                keys.append(key)
    loss_keys = [k for k in keys if "loss" in k]
    metric_keys = [k for k in keys if "loss" not in k]
    if not keys:
        raise ValueError(
            f"history rows have no numeric curves to plot (keys: {sorted(history[0])}); "
            "expected e.g. train_loss, val_loss, val_accuracy"
        )

    panels = [(name, ks) for name, ks in (("loss", loss_keys), ("metric", metric_keys)) if ks]
    fig = _new_figure(5.5 * len(panels), 4.2)
    fig.suptitle(title)
    for index, (ylabel, panel_keys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        for key in panel_keys:
            points = [(e, row[key]) for e, row in zip(epochs, history) if _is_number(row.get(key))]
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_ablation(
    table: Mapping[str, float],
    path: str | Path,
    *,
    metric: str = "accuracy",
    title: str = "Modality ablation",
) -> Path:
    """Horizontal bars of one score per modality setting.

    Args:
        table: ``{setting: score}``, e.g. ``{"all": 0.91, "without image": 0.72,
            "image only": 0.80}``; bars keep the given order. The ``"all"`` bar is highlighted
            and marked with a dashed reference line so drops read at a glance.
    """
    if not table:
        raise ValueError("ablation table is empty; pass {setting: score}, e.g. {'all': 0.9}")
    names = list(table)
    values = [float(table[name]) for name in names]
    fig = _new_figure(7.0, max(2.5, 0.45 * len(names) + 1.4))
    ax = fig.add_subplot()
    colors = ["tab:orange" if name == "all" else "tab:blue" for name in names]
    positions = np.arange(len(names))
    ax.barh(positions, values, color=colors)
    ax.set_yticks(positions, labels=names)
    ax.invert_yaxis()  # first setting on top, matching the table order
    if "all" in table:
        ax.axvline(float(table["all"]), color="tab:orange", linestyle="--", linewidth=1)
    # Accuracies get a fixed 0..1 axis (plus room for the value labels) so figures compare.
    if min(values) >= 0.0 and max(values) <= 1.0:
        ax.set_xlim(0.0, 1.12)
    for y, value in zip(positions, values):
        ax.text(value, y, f" {value:.3f}", va="center", fontsize=9)
    ax.set_xlabel(metric)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_robustness(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    xlabels: Mapping[str, str] | None,
    path: str | Path,
    *,
    metric: str = "accuracy",
    title: str = "Robustness to corrupted inputs",
) -> Path:
    """Score against corruption level, one panel per modality (their units differ).

    Args:
        curves: ``{modality: [(level, score), ...]}``, e.g.
            ``{"audio": [(30, 0.9), (10, 0.8), (0, 0.6)], "video": [(0, 0.9), (50, 0.7)]}``.
        xlabels: ``{modality: x-axis label}``, e.g. ``{"audio": "dB SNR",
            "video": "frame drop %"}``; a modality without one gets ``"level"``.
    """
    if not curves:
        raise ValueError("robustness curves are empty; pass {modality: [(level, score), ...]}")
    xlabels = xlabels or {}
    modalities = list(curves)
    columns = min(3, len(modalities))
    rows = math.ceil(len(modalities) / columns)
    fig = _new_figure(4.6 * columns, 3.8 * rows)
    fig.suptitle(title)
    all_scores = [float(s) for points in curves.values() for _, s in points]
    in_unit_range = bool(all_scores) and min(all_scores) >= 0.0 and max(all_scores) <= 1.0
    first_ax = None
    for index, modality in enumerate(modalities):
        ax = fig.add_subplot(rows, columns, index + 1, sharey=first_ax)
        first_ax = first_ax or ax
        points = sorted((float(level), float(score)) for level, score in curves[modality])
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o")
        ax.set_title(modality)
        ax.set_xlabel(xlabels.get(modality, "level"))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if in_unit_range:
            ax.set_ylim(0.0, 1.05)
    return _save(fig, path)


def plot_reliability(
    curves: Mapping[str, Mapping],
    path: str | Path,
    *,
    title: str = "Reliability diagram",
) -> Path:
    """Accuracy against mean confidence per confidence bin, one line per curve.

    Args:
        curves: ``{label: bins}`` with bins as `evaluate.calibration.reliability_bins` returns
            (``confidence``, ``accuracy`` and ``count`` per bin; empty bins hold None), e.g.
            ``{"before (T=1)": ..., "after (T=1.8)": ...}``. A calibrated model follows the
            diagonal.
    """
    fig = _new_figure(5.2, 4.6)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for label, bins in curves.items():
        points = [
            (c, a) for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"]) if n
        ]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (bin mean)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_roc(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str = "ROC",
) -> Path:
    """ROC curves, one per entry: `{name: (false positive rates, true positive rates)}`
    (the names may carry their AUC, e.g. "fused (AUC 0.97)"); the diagonal is chance."""
    if not curves:
        raise ValueError("curves is empty; pass {name: (fpr, tpr)}")
    fig = _new_figure(5.0, 4.6)
    ax = fig.add_subplot()
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def _new_figure(width: float, height: float) -> Figure:
    # Imported here: matplotlib costs about a second of every process start, and only the
    # processes that write a report draw anything.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _is_number(value) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
