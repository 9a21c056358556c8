"""An epoch's validation metrics from the predictions of the validation split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mmfuse.evaluate.metrics import classification_metrics
from mmfuse.train.losses import IGNORE_INDEX

KEYS = ("accuracy", "balanced_accuracy", "f1_macro")


def validation_record(
    out: dict, tasks: Sequence[str], classes: Mapping[str, Sequence[str]]
) -> dict:
    """`val_loss` and `val_<metric>` for the first task (`val_<task>_<metric>` for others), from
    `predict_dataset`'s output; a task with no labelled row has no metrics."""
    record = {"val_loss": out["loss"]}
    for i, task in enumerate(tasks):
        y = out["labels"][task]
        labelled = y != IGNORE_INDEX
        if not labelled.any():
            continue
        m = classification_metrics(
            y[labelled],
            proba=out["proba"]["all"][task][labelled],
            labels=list(classes[task]),
            top_k=(),
        )
        prefix = "val_" if i == 0 else f"val_{task}_"
        for key in KEYS:
            record[prefix + key] = m[key]
    return record
