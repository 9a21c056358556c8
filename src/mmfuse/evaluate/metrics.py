"""Classification metrics as plain, JSON-safe dicts.

Every number is computed by scikit-learn so results match what anyone would get by hand; this
module only decides which rows count, names the classes and converts numpy types to plain Python.

The dict returned by :func:`classification_metrics` (the format the report and the trainer use)::

    {
        "labels": ["cat", "dog", "bird"],         # class names, index i names class i
        "n_samples": 120,                         # rows scored (true label present)
        "n_missing": 8,                           # rows skipped because the true label is missing
        "accuracy": 0.81,
        "balanced_accuracy": 0.78,
        "precision_macro": 0.80, "recall_macro": 0.78, "f1_macro": 0.79,
        "precision_weighted": 0.81, "recall_weighted": 0.81, "f1_weighted": 0.81,
        "per_class": {"cat": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 40}, ...},
        "confusion_matrix": [[32, 5, 3], [...], [...]],  # rows = true class, columns = predicted
        "top_k_accuracy": {"top_1": 0.81, "top_3": ...},  # only with proba, only k < n_classes
        "log_loss": 0.52,                                  # only with proba
    }

Macro and weighted averages follow scikit-learn's default: they average over the classes that
occur in the true or predicted labels, so a class absent from a small validation split does not
drag the macro average to zero. ``per_class`` and ``confusion_matrix`` always list every class.
When no row has a true label, every score is ``None`` (JSON ``null``) rather than NaN, which
is not valid JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

# scikit-learn's metrics are imported where they are used: `sklearn.metrics` costs a second or
# two of every process start (it pulls in the rest of scikit-learn), and the processes that
# only predict or serve never score anything.

__all__ = ["classification_metrics", "format_table", "multitask_metrics"]

# Rows summing further than this from 1 are almost certainly logits, not probabilities.
_PROBA_SUM_TOLERANCE = 1e-3

_SCORE_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
)


def classification_metrics(
    y_true,
    y_pred=None,
    proba=None,
    *,
    labels: Sequence[str],
    top_k: Sequence[int] = (1, 3),
) -> dict:
    """Score one classification task.

    Args:
        y_true: N true labels, as class indices into ``labels`` or as class names. A missing
            label (negative index such as -1 or -100, ``None`` or NaN) excludes its row: in
            multi-task data not every sample is labelled for every task.
        y_pred: N predicted labels (indices or names). If omitted, the argmax of ``proba``.
        proba: N×C class probabilities (rows sum to 1; apply softmax to logits first), with
            C == len(labels). Enables ``top_k_accuracy`` and ``log_loss``.
        labels: the C class names; index i names class i.
        top_k: the k values for top-k accuracy; those with k >= C are skipped because they
            are trivially 1.

    Returns:
        The dict described in the module docstring, made only of str, int, float, None,
        lists and dicts.
    """
    labels = _check_labels(labels)
    if y_pred is None and proba is None:
        raise ValueError("pass y_pred, proba or both; got neither")
    true_idx = _to_indices(y_true, labels, "y_true", allow_missing=True)
    if proba is not None:
        proba = _check_proba(proba, n_rows=len(true_idx), n_classes=len(labels))
    pred_idx = _predicted_indices(y_pred, proba, labels, n_rows=len(true_idx))

    keep = true_idx >= 0
    result: dict = {
        "labels": labels,
        "n_samples": int(keep.sum()),
        "n_missing": int((~keep).sum()),
    }
    if not keep.any():
        return result | _unscored(labels, with_proba=proba is not None, top_k=top_k)

    y, p = true_idx[keep], pred_idx[keep]
    result |= _label_scores(y, p)
    result |= _class_scores(y, p, labels)
    if proba is not None:
        result |= _proba_scores(y, proba[keep], top_k)
    return result


def _check_labels(labels: Sequence[str]) -> list[str]:
    """The class names as strings; at least two, no repeats."""
    labels = [str(name) for name in labels]
    if len(labels) < 2:
        raise ValueError(f"labels must name at least 2 classes, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {labels!r}")
    return labels


def _predicted_indices(y_pred, proba, labels: list[str], *, n_rows: int) -> np.ndarray:
    """N predicted class indices: `y_pred` checked against the labels, else argmax of `proba`."""
    if y_pred is None:
        return proba.argmax(axis=1)
    pred_idx = _to_indices(y_pred, labels, "y_pred", allow_missing=False)
    if len(pred_idx) != n_rows:
        raise ValueError(
            f"y_true has {n_rows} rows but y_pred has {len(pred_idx)}; "
            "they must describe the same samples"
        )
    return pred_idx


def _unscored(labels: list[str], *, with_proba: bool, top_k: Sequence[int]) -> dict:
    """Every score as None (JSON null, unlike NaN) when no row has a true label."""
    n_classes = len(labels)
    result: dict = dict.fromkeys(_SCORE_KEYS)
    result["per_class"] = {
        name: {"precision": None, "recall": None, "f1": None, "support": 0} for name in labels
    }
    result["confusion_matrix"] = [[0] * n_classes for _ in range(n_classes)]
    if with_proba:
        result["top_k_accuracy"] = {f"top_{k}": None for k in _valid_k(top_k, n_classes)}
        result["log_loss"] = None
    return result


def _label_scores(y: np.ndarray, p: np.ndarray) -> dict:
    """Accuracy, balanced accuracy and macro/weighted precision, recall and F1 (keys of
    `_SCORE_KEYS`), from the labelled rows' true (`y`) and predicted (`p`) indices."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        precision_recall_fscore_support,
    )

    result = {"accuracy": float(accuracy_score(y, p))}
    with warnings.catch_warnings():
        # Predicting a class that never occurs in y_true is normal on small splits; its recall
        # is undefined and scikit-learn leaves it out, which is what we want.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        result["balanced_accuracy"] = float(balanced_accuracy_score(y, p))
    for average in ("macro", "weighted"):
        prec, rec, f1, _ = precision_recall_fscore_support(y, p, average=average, zero_division=0)
        result[f"precision_{average}"] = float(prec)
        result[f"recall_{average}"] = float(rec)
        result[f"f1_{average}"] = float(f1)
    return result


def _class_scores(y: np.ndarray, p: np.ndarray, labels: list[str]) -> dict:
    """``per_class`` and ``confusion_matrix``, listing every class, present or not."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    all_classes = list(range(len(labels)))
    prec, rec, f1, support = precision_recall_fscore_support(
        y, p, labels=all_classes, average=None, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }
    matrix = confusion_matrix(y, p, labels=all_classes).tolist()
    return {"per_class": per_class, "confusion_matrix": matrix}


def _proba_scores(y: np.ndarray, scores: np.ndarray, top_k: Sequence[int]) -> dict:
    """``top_k_accuracy`` and ``log_loss`` from the labelled rows' N×C probabilities."""
    from sklearn.metrics import log_loss, top_k_accuracy_score

    n_classes = scores.shape[1]
    all_classes = list(range(n_classes))
    # With two classes scikit-learn wants the positive-class score, not an N×2 matrix.
    ranking_scores = scores[:, 1] if n_classes == 2 else scores
    top = {
        f"top_{k}": float(top_k_accuracy_score(y, ranking_scores, k=k, labels=all_classes))
        for k in _valid_k(top_k, n_classes)
    }
    return {"top_k_accuracy": top, "log_loss": float(log_loss(y, scores, labels=all_classes))}


def multitask_metrics(
    outputs: Mapping[str, tuple],
    labels: Mapping[str, Sequence[str]],
    top_k: Sequence[int] = (1, 3),
) -> dict[str, dict]:
    """Score several tasks at once.

    Args:
        outputs: ``{task: (y_true, proba)}`` with y_true N indices (missing = -1) and proba N×C.
            A 3-tuple ``(y_true, y_pred, proba)`` is also accepted when predictions are not the
            argmax (e.g. thresholded).
        labels: ``{task: [class names]}``, one entry per task in ``outputs``.

    Returns:
        ``{task: classification_metrics(...)}`` in sorted task order.
    """
    missing = sorted(set(outputs) - set(labels))
    if missing:
        raise ValueError(
            f"no class names for task(s) {missing}; pass labels={{task: [names]}} for every "
            f"task in outputs ({sorted(outputs)})"
        )
    results = {}
    for task in sorted(outputs):
        parts = outputs[task]
        if len(parts) == 2:
            y_true, proba = parts
            y_pred = None
        elif len(parts) == 3:
            y_true, y_pred, proba = parts
        else:
            raise ValueError(
                f"task {task!r}: expected (y_true, proba) or (y_true, y_pred, proba), "
                f"got a tuple of {len(parts)}"
            )
        results[task] = classification_metrics(
            y_true, y_pred, proba, labels=labels[task], top_k=top_k
        )
    return results


def format_table(metrics: Mapping) -> str:
    """Render metrics for a terminal: headline numbers, then one row per class.

    Accepts the dict of :func:`classification_metrics` or the ``{task: metrics}`` dict of
    :func:`multitask_metrics` (one block per task).
    """
    if "per_class" not in metrics:
        blocks = [
            f"== {task} ==\n{format_table(task_metrics)}" for task, task_metrics in metrics.items()
        ]
        return "\n\n".join(blocks)

    lines = [f"samples: {metrics['n_samples']} (missing labels skipped: {metrics['n_missing']})"]
    width = max(len(name) for name, _ in headline_rows(metrics))
    lines += [f"{name:<{width}}  {_fmt(value)}" for name, value in headline_rows(metrics)]

    names = list(metrics["per_class"])
    name_width = max(len("class"), *(len(n) for n in names))
    header = f"{'class':<{name_width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>7}"
    lines += ["", header, "-" * len(header)]
    for name in names:
        row = metrics["per_class"][name]
        lines.append(
            f"{name:<{name_width}}  {_fmt(row['precision']):>9}  {_fmt(row['recall']):>9}  "
            f"{_fmt(row['f1']):>9}  {row['support']:>7}"
        )
    return "\n".join(lines)


def headline_rows(metrics: Mapping) -> list[tuple[str, float | None]]:
    """The summary numbers as (display name, value) pairs, in reading order."""
    rows = [(key.replace("_", " "), metrics.get(key)) for key in _SCORE_KEYS]
    for key, value in metrics.get("top_k_accuracy", {}).items():
        rows.append((key.replace("_", "-") + " accuracy", value))
    if "log_loss" in metrics:
        rows.append(("log loss", metrics["log_loss"]))
    # Set by `evaluate_model` (evaluate.calibration), not by classification_metrics.
    for key in ("ece", "ece_uncalibrated"):
        if key in metrics:
            rows.append((key.replace("_", " "), metrics[key]))
    return rows


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}"


def _valid_k(top_k: Sequence[int], n_classes: int) -> list[int]:
    return sorted({int(k) for k in top_k if 1 <= int(k) < n_classes})


def _to_indices(values, labels: list[str], name: str, *, allow_missing: bool) -> np.ndarray:
    """Class indices as an int array; missing labels become -1."""
    values = _as_numpy(values)
    arr = np.asarray(values, dtype=object if _has_strings(values) else None)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sample), got shape {arr.shape}")
    if arr.dtype == object:
        lookup = {label: i for i, label in enumerate(labels)}
        out = np.empty(len(arr), dtype=np.int64)
        for row, value in enumerate(arr):
            if _is_missing(value):
                out[row] = -1
            elif isinstance(value, str):
                if value not in lookup:
                    raise ValueError(
                        f"{name}[{row}] = {value!r} is not a class name; known classes: {labels}"
                    )
                out[row] = lookup[value]
            else:
                out[row] = int(value)
    elif np.issubdtype(arr.dtype, np.floating):
        nan = np.isnan(arr)
        if not np.all(arr[~nan] == np.round(arr[~nan])):
            raise ValueError(f"{name} holds non-integer values; pass class indices or names")
        out = np.where(nan, -1, arr).astype(np.int64)
    elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        out = arr.astype(np.int64)
    else:
        raise ValueError(f"{name} must hold class indices or names, got dtype {arr.dtype}")

    out[out < 0] = -1
    if not allow_missing and np.any(out < 0):
        row = int(np.flatnonzero(out < 0)[0])
        raise ValueError(f"{name}[{row}] is missing or negative; every prediction needs a class")
    too_big = out >= len(labels)
    if np.any(too_big):
        row = int(np.flatnonzero(too_big)[0])
        raise ValueError(
            f"{name}[{row}] = {out[row]} is out of range for {len(labels)} classes "
            f"(valid indices 0..{len(labels) - 1}; use a negative value for a missing label)"
        )
    return out


def _as_numpy(values):
    # Model outputs are often torch tensors, possibly on GPU or still requiring grad.
    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    return values


def _has_strings(values) -> bool:
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "OUS"
    try:
        return any(isinstance(v, str) or v is None for v in values)
    except TypeError:
        return False


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating) and math.isnan(value):
        return True
    return not isinstance(value, str) and int(value) < 0


def _check_proba(proba, *, n_rows: int, n_classes: int) -> np.ndarray:
    proba = np.asarray(_as_numpy(proba), dtype=np.float64)
    if proba.shape != (n_rows, n_classes):
        raise ValueError(
            f"proba has shape {proba.shape}; expected (n_samples, n_classes) = "
            f"({n_rows}, {n_classes})"
        )
    if not np.all(np.isfinite(proba)) or np.any(proba < 0):
        raise ValueError("proba holds negative or non-finite values; pass softmax(logits)")
    sums = proba.sum(axis=1)
    bad = np.abs(sums - 1) > _PROBA_SUM_TOLERANCE
    if np.any(bad):
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"proba row {row} sums to {sums[row]:.4f}, not 1; pass probabilities "
            "(softmax(logits, dim=-1)), not logits"
        )
    # float32 softmax rows miss 1 by ~1e-7, which scikit-learn's log_loss warns about.
    return proba / sums[:, None]
