"""Ensemble weights by greedy selection with replacement (Caruana et al. 2004), bagged.

Start from nothing; at each of `rounds` steps add (again, if it helps most) the member whose
addition gives the best validation score of the running mean; a member's weight is the share of
steps that picked it. Picking with replacement lets the score settle instead of overfitting by
piling on weak members, which is why AutoGluon's weighted ensemble uses it.

On a few dozen validation rows the greedy choice follows their noise: which member "wins" is
decided by a row or two, and the weights carry no information to new rows. `bagged_weights`
runs the selection on bootstrap resamples of the validation rows and averages the weights
(bagged ensemble selection, Caruana et al. 2006, with the bags drawn over rows rather than
over a library of thousands of models: an ensemble here has a handful of members). Where the
rows are many, every resample picks the same weights and the average is the plain selection;
where they are few, the choice varies from resample to resample and the average moves toward
equal weights by as much as the validation rows leave the choice in doubt.

The average still leans on the in-bag rows, so the weights are then shrunk toward equal ones,
`(1 - s) · bagged + s · equal`, with `s` chosen on the out-of-bag rows (the ~37 % of rows each
resample leaves out, Breiman 1996): the `s` whose blend of each bag's weights scores best on
that bag's left-out rows. Equal weights are the usual hard-to-beat combination of similar
models; the out-of-bag rows decide how far toward them to go, from not at all (one member
clearly better on many rows: `s` = 0) to all the way. "Equal" is among the members some
resample picked: a member that no resample wanted keeps weight 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

ROUNDS = 25
BAGS = 50
# An ensemble's "auto" weighing (`train.ensemble.choose_weights`) keeps the selected weights
# only on this many labelled held-out rows or more, and only when on those rows they beat equal
# weights by MIN_GAIN_SE standard errors of the difference (`gain_in_se`). Why so high a bar:
# the members chose their best epoch and temperature on these same rows and the weights are the
# best of many candidates tried on them, so the gain is measured in-sample (a Bonferroni-like
# bar: the best of 300 comparisons of pure noise reaches 4 standard errors less than one time
# in 100). On fewer rows the standard error itself is too rough to lean on (a few rows hold
# most of a log loss).
# docs/ensembles.md has the cases: selection won on test where its validation gain was 4.9-5.6
# standard errors (avdigits, 225 rows) and lost where it was 1.4-3.9 (real tasks, 30-340 rows).
MIN_ROWS_TO_SELECT = 200
MIN_GAIN_SE = 4.0
GAIN_BOOTSTRAPS = 200
SHRINK_GRID = np.linspace(0.0, 1.0, 11)
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


@dataclass
class Selection:
    """Bagged selection's result: the weights, the bags' mean before shrinking, and `shrink`,
    the share of equal weights blended in (0: none)."""

    weights: dict[str, float]
    bagged: dict[str, float]
    shrink: float


def bagged_weights(
    probas: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    metric: str = "log_loss",
    rounds: int = ROUNDS,
    *,
    bags: int = BAGS,
    seed: int = 0,
) -> Selection:
    """`greedy_weights` averaged over `bags` bootstrap resamples of the validation rows (the
    same rows for every task, drawn from `seed`: the same inputs give the same weights), then
    shrunk toward equal weights by the share that scores best on the out-of-bag rows.
    `bags=0`, or too few labelled rows to resample, is the plain selection on all rows."""
    names = list(probas)
    n = len(next(iter(labels.values())))
    rng = np.random.default_rng(seed)
    picked = []  # per bag: (its weights, its out-of-bag rows)
    for _ in range(bags):
        rows = rng.integers(0, n, n)
        if _labelled_rows(labels, rows):
            w = greedy_weights(*_rows(probas, labels, rows), metric, rounds)
            picked.append((np.array([w[m] for m in names]), np.setdiff1d(np.arange(n), rows)))
    if not picked:
        plain = greedy_weights(probas, labels, metric, rounds)
        return Selection(plain, dict(plain), 0.0)
    bagged = np.mean([w for w, _ in picked], axis=0)
    # Equal weights among the members some bag picked: one no bag wanted stays at 0.
    equal = (bagged > 0) / (bagged > 0).sum()
    oob_loss = np.zeros(len(SHRINK_GRID))
    for w, out in picked:
        if _labelled_rows(labels, out):
            held = _rows(probas, labels, out)
            oob_loss += [_blend_loss(metric, *held, (1 - s) * w + s * equal) for s in SHRINK_GRID]
    # argmin takes the first of equal losses: the least shrinking the left-out rows support
    # (none when no bag left a labelled row out).
    shrink = float(SHRINK_GRID[int(np.argmin(oob_loss))])
    weights = (1 - shrink) * bagged + shrink * equal
    return Selection(dict(zip(names, weights.tolist())), dict(zip(names, bagged.tolist())), shrink)


def gain_in_se(
    probas: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    metric: str = "log_loss",
    *,
    bootstraps: int = GAIN_BOOTSTRAPS,
    seed: int = 0,
) -> float:
    """By how many standard errors the mix with `weights` scores better than equal weights on
    these rows (negative: worse). The standard error is the spread of the difference over
    `bootstraps` resamples of the rows (the weights held fixed), so it pairs the two mixes row
    by row and works for any `metric`, per-row or not. No spread: 0 when the mixes tie, else
    ±inf."""
    names = list(probas)
    w = np.array([weights.get(m, 0.0) for m in names])
    equal = np.full(len(names), 1 / len(names))

    def gain(held) -> float:
        return _blend_loss(metric, *held, equal) - _blend_loss(metric, *held, w)

    n = len(next(iter(labels.values())))
    rng = np.random.default_rng(seed)
    spread = [
        gain(_rows(probas, labels, rows))
        for rows in (rng.integers(0, n, n) for _ in range(bootstraps))
        if _labelled_rows(labels, rows)
    ]
    whole = gain(_rows(probas, labels, np.arange(n)))
    se = float(np.std(spread, ddof=1)) if len(spread) > 1 else 0.0
    if se <= 1e-12:
        return 0.0 if abs(whole) <= 1e-12 else float(np.sign(whole) * np.inf)
    return whole / se


def _labelled_rows(labels: Mapping[str, np.ndarray], rows: np.ndarray) -> bool:
    return any((np.asarray(y)[rows] >= 0).any() for y in labels.values())


def _rows(probas, labels, rows: np.ndarray) -> tuple[dict, dict]:
    """`probas` and `labels` restricted to `rows` (repeats kept)."""
    picked = {m: {t: np.asarray(p[t])[rows] for t in labels} for m, p in probas.items()}
    return picked, {t: np.asarray(y)[rows] for t, y in labels.items()}


def _blend_loss(metric: str, probas, labels, weights: np.ndarray) -> float:
    """`_task_score` of the members' mix with `weights` (in `probas`' order), labelled rows."""
    keep = {t: y >= 0 for t, y in labels.items() if (y >= 0).any()}
    y = {t: labels[t][k] for t, k in keep.items()}
    mix = {t: sum(w * p[t][keep[t]] for w, p in zip(weights, probas.values())) for t in keep}
    return _task_score(metric, y, mix)
