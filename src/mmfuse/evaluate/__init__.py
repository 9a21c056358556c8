"""Evaluation building blocks: metrics dicts, figures and a report folder.

These take plain arrays and dicts (no model class), so the trainer, the CLI and a notebook all
produce the same numbers and files:

    metrics = classification_metrics(y_true, proba=proba, labels=["cat", "dog", "bird"])
    print(format_table(metrics))
    write_report("runs/exp1/eval", metrics, history=history, ablation=ablation)

The exact input formats are documented in :mod:`mmfuse.evaluate.metrics` (the metrics dict) and
:mod:`mmfuse.evaluate.report` (history, ablation, robustness).
"""

from mmfuse.evaluate.metrics import classification_metrics, format_table, multitask_metrics
from mmfuse.evaluate.plots import plot_ablation, plot_confusion, plot_curves, plot_robustness
from mmfuse.evaluate.report import write_report

__all__ = [
    "classification_metrics",
    "format_table",
    "multitask_metrics",
    "plot_ablation",
    "plot_confusion",
    "plot_curves",
    "plot_robustness",
    "write_report",
]
