"""Evaluation building blocks: metrics dicts, figures and a report folder.

The metric, plot and report functions take plain arrays and dicts (no model class), so the trainer, the CLI and a notebook all
produce the same numbers and files:

    metrics = classification_metrics(y_true, proba=proba, labels=["cat", "dog", "bird"])
    print(format_table(metrics))
    write_report("runs/exp1/eval", metrics, history=history, ablation=ablation)

The exact input formats are documented in :mod:`mmfuse.evaluate.metrics` (the metrics dict) and
:mod:`mmfuse.evaluate.report` (history, ablation, robustness). `evaluate_model` runs a trained
model over a dataset and produces all of them, with per-modality ablation and robustness curves.
"""

from mmfuse.evaluate.ablation import ablation_scores, ablation_variants, accuracy_of
from mmfuse.evaluate.corruptions import (
    CORRUPTIONS,
    Corruption,
    audio_snr,
    corruption_for,
    image_noise,
    video_frame_drop,
)
from mmfuse.evaluate.evaluation import corrupted, evaluate_model
from mmfuse.evaluate.metrics import classification_metrics, format_table, multitask_metrics
from mmfuse.evaluate.plots import plot_ablation, plot_confusion, plot_curves, plot_robustness
from mmfuse.evaluate.report import write_report
from mmfuse.evaluate.robustness import robustness_curves

__all__ = [
    "CORRUPTIONS",
    "Corruption",
    "ablation_scores",
    "ablation_variants",
    "accuracy_of",
    "audio_snr",
    "classification_metrics",
    "corrupted",
    "corruption_for",
    "evaluate_model",
    "format_table",
    "image_noise",
    "multitask_metrics",
    "plot_ablation",
    "plot_confusion",
    "plot_curves",
    "plot_robustness",
    "robustness_curves",
    "video_frame_drop",
    "write_report",
]
