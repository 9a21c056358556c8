"""The prediction table, written once for `mmfuse predict` (stdout or a file) and streamed
batch prediction: `row`, the model's input columns in the manifest's order, `prediction`,
`error` where asked for, and `proba_<class>` columns where asked for."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd


def predicted_labels(proba: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """The argmax class of each row of N×C `proba`; None where a row is not finite (NaN for an
    unreadable row; NaN or Inf from a model is no prediction either)."""
    ok = np.isfinite(proba).all(axis=1)
    out = np.full(len(proba), None, dtype=object)
    out[ok] = np.asarray(classes, dtype=object)[proba[ok].argmax(axis=1)]
    return out


def prediction_table(
    frame: pd.DataFrame,
    rows: Sequence[int],
    input_columns: Collection[str],
    classes: Sequence[str],
    proba: np.ndarray,
    *,
    errors: Sequence[str | None] | None = None,
    with_proba: bool = False,
    as_text: bool = False,
) -> pd.DataFrame:
    """One row per manifest row in `rows`; `proba` is N×C (a row with NaN or Inf has no
    prediction; `errors` says why).

    `as_text` writes input cells as strings (None where empty), so that every Parquet part of a
    streamed prediction has the same schema.
    """
    table = pd.DataFrame({"row": np.asarray(rows, dtype=np.int64)})
    for column in [c for c in frame.columns if c in input_columns]:
        values = frame[column].iloc[list(rows)].to_numpy(dtype=object)
        if as_text:
            values = [None if v is None or v != v else str(v) for v in values]
        table[column] = values
    table["prediction"] = predicted_labels(proba, classes)
    if errors is not None:
        table["error"] = list(errors)
    if with_proba:
        for j, c in enumerate(classes):
            table[f"proba_{c}"] = proba[:, j]
    return table
