"""Ensemble weights by greedy selection with replacement (Caruana et al. 2004).

Start from nothing; at each of `rounds` steps add (again, if it helps most) the member whose
addition gives the best validation score of the running mean; a member's weight is the share of
steps that picked it. Picking with replacement lets the score settle instead of overfitting by
piling on weak members, which is why AutoGluon's weighted ensemble uses it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ROUNDS = 25
_EPS = 1e-15


def score(metric: str, y: np.ndarray, proba: np.ndarray) -> float:
    """`metric` of probabilities `proba` (N×C) against labels `y` (labelled rows only)."""
    if metric == "log_loss":
        return float(-np.log(np.clip(proba[np.arange(len(y)), y], _EPS, 1.0)).mean())
    pred = proba.argmax(axis=1)
    if metric == "accuracy":
        return float((pred == y).mean())
    from sklearn.metrics import balanced_accuracy_score, f1_score

    if metric == "balanced_accuracy":
        return float(balanced_accuracy_score(y, pred))
    return float(f1_score(y, pred, average="macro", zero_division=0))


def _task_score(metric: str, labels: Mapping[str, np.ndarray], mix: Mapping[str, np.ndarray]):
    """The mean over tasks, as a loss (lower is better) whatever the metric."""
    values = [score(metric, labels[t], mix[t]) for t in labels]
    mean = float(np.mean(values))
    return mean if metric == "log_loss" else -mean


def greedy_weights(
    probas: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    metric: str = "log_loss",
    rounds: int = ROUNDS,
) -> dict[str, float]:
    """`{member: weight}` (summing to 1) from validation `probas[member][task]` (N×C) and
    `labels[task]` (N, negative: no label, left out). Ties go to the member listed first.

    The weights are those of the best step, not the last: the first step picks the best single
    member, so the ensemble never scores worse on validation than its best member."""
    keep = {t: np.asarray(y) >= 0 for t, y in labels.items()}
    y = {t: np.asarray(v)[keep[t]] for t, v in labels.items() if keep[t].any()}
    p = {
        m: {t: np.asarray(pt[t], dtype=np.float64)[keep[t]] for t in y} for m, pt in probas.items()
    }
    names = list(p)
    counts = dict.fromkeys(names, 0)
    total = {t: np.zeros_like(p[names[0]][t]) for t in y}
    best_counts, best_score = dict(counts), np.inf
    for step in range(1, rounds + 1):
        best, best_loss = None, np.inf
        for m in names:
            mix = {t: (total[t] + p[m][t]) / step for t in y}
            loss = _task_score(metric, y, mix)
            if loss < best_loss - 1e-12:
                best, best_loss = m, loss
        counts[best] += 1
        total = {t: total[t] + p[best][t] for t in y}
        if best_loss < best_score - 1e-12:
            best_counts, best_score = dict(counts), best_loss
    used = sum(best_counts.values())
    return {m: best_counts[m] / used for m in names}
