"""Robustness curves: accuracy as one input's raw media is corrupted more and more.

The corruption (see `corruptions.py`) is applied to the decoded media of every row, before the
encoder's preprocessing, and the whole evaluation is rerun per level; other inputs stay clean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from mmfuse.evaluate.ablation import accuracy_of
from mmfuse.evaluate.corruptions import corruption_for


def robustness_curves(
    predict: Callable[[Mapping[str, tuple]], Mapping],
    inputs: Mapping[str, str],
    task: str,
) -> dict[str, dict]:
    """`{input: {"levels", "accuracy", "unit", "corruption"}}` for every corruptible input.

    `predict(corruptions)` runs the model over the evaluation data with `corruptions` =
    `{input name: (Corruption, level)}` (empty: clean) and returns the dict of
    `mmfuse.infer.engine.predict_dataset` / `predict_batches`.
    `inputs` maps input names to modalities; text has no corruption and is left out.
    """
    clean = accuracy_of(*_scored(predict({}), task))
    curves = {}
    for name, modality in inputs.items():
        corruption = corruption_for(modality)
        if corruption is None:
            continue
        levels, scores = [], []
        for level in corruption.levels:
            if corruption.is_clean(level):
                score = clean
            else:
                score = accuracy_of(*_scored(predict({name: (corruption, level)}), task))
            levels.append(level)
            scores.append(score)
        unit = corruption.unit
        finite = [x for x in levels if math.isfinite(x)]
        if len(finite) < len(levels):
            # A plot needs a finite x: put "clean" (infinite SNR) one step past the best level.
            shown = max(finite) + 10 if finite else 0.0
            levels = [x if math.isfinite(x) else shown for x in levels]
            unit = f"{unit}; clean shown at {shown:g}"
        curves[name] = {
            "levels": levels,
            "accuracy": scores,
            "unit": unit,
            "corruption": corruption.name,
        }
    return curves


def _scored(predictions: Mapping, task: str):
    return predictions["labels"][task], predictions["proba"]["all"][task]
