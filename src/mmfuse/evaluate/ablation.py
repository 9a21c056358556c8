"""Per-modality ablation: the same trained model scored with inputs removed through the mask.

No retraining: each variant only changes the presence mask the fusion sees, so the table shows
how much the trained model leans on each input, and how well each input does alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mmfuse.data.modalities import TABULAR

IGNORE_INDEX = -100


def ablation_variants(
    names: Sequence[str], modalities: Mapping[str, str] | None = None
) -> dict[str, dict[str, bool]]:
    """`{"all": ..., "without x": ..., "x only": ...}`: which inputs each variant keeps; with
    `modalities` (input → modality), also "without tabular" and "tabular only" when the model
    has numeric or categorical inputs beside others."""
    names = list(names)
    variants = {"all": {n: True for n in names}}
    if len(names) > 1:
        for n in names:
            variants[f"without {n}"] = {m: m != n for m in names}
        for n in names:
            variants[f"{n} only"] = {m: m == n for m in names}
    tabular = {n for n in names if (modalities or {}).get(n) in TABULAR}
    if tabular and len(tabular) < len(names):
        variants["without tabular"] = {m: m not in tabular for m in names}
        variants["tabular only"] = {m: m in tabular for m in names}
    return variants


def accuracy_of(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    """Accuracy over labelled rows; a row with NaN probabilities (nothing left to fuse) is wrong."""
    y_true = np.asarray(y_true)
    labelled = y_true != IGNORE_INDEX
    if not labelled.any():
        return None
    proba = np.asarray(proba)[labelled]
    empty = np.isnan(proba).any(axis=1)
    pred = np.where(empty, -1, np.nan_to_num(proba, nan=-1.0).argmax(axis=1))
    return float((pred == y_true[labelled]).mean())


def ablation_scores(predictions: Mapping, task: str) -> dict[str, float | None]:
    """Accuracy per variant of `task`, from the dict of `mmfuse.infer.engine.predict_dataset`
    (or `predict_batches`) run with `variants=ablation_variants(...)`."""
    y = predictions["labels"][task]
    return {v: accuracy_of(y, probas[task]) for v, probas in predictions["proba"].items()}
