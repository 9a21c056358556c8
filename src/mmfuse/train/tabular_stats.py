"""What a numeric or categorical encoder learns from the training split before training: the
mean and standard deviation of a number, the list of categories.

Only the manifest given (the training split) is read; validation, test and prediction data are
standardised with these statistics and looked up in this list, so they cannot leak into the
model. The result is encoder options, saved in config.json with the model.
"""

from __future__ import annotations

import math

import numpy as np

from mmfuse.data.manifest import Manifest


def fitted_options(manifest: Manifest, column: str, modality: str) -> dict:
    """`{"mean", "std"}` of a numeric column or `{"categories"}` of a categorical one."""
    values = [v for v in manifest.frame[column] if v is not None]
    if modality == "numeric":
        # Text in a numeric column is `validate`'s to report; its rows are skipped when loaded.
        numbers = np.array([v for v in values if isinstance(v, float) and math.isfinite(v)])
        if numbers.size == 0:
            return {"mean": 0.0, "std": 1.0}
        std = float(numbers.std())
        # A constant column: dividing by ~0 would blow up any other value met later.
        return {"mean": float(numbers.mean()), "std": std if std > 1e-12 else 1.0}
    if modality == "categorical":
        return {"categories": sorted({str(v) for v in values})}
    return {}
