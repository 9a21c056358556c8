"""Calibrated probabilities: temperature scaling, expected calibration error, reliability bins.

A classifier trained with cross-entropy is usually over-confident: among the rows it gives 0.95,
far fewer than 95 % are right, so a threshold on its probability ("alert when P > 0.9") means
little. Temperature scaling (Guo et al. 2017) divides the logits by one number T per task,
fitted on held-out data to minimise the negative log-likelihood; the argmax, hence accuracy,
is unchanged. ECE measures what is left: over 15 equal-width confidence bins, the mean gap
between confidence and accuracy, weighted by the share of rows in each bin.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "ECE_BINS",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
    "untempered",
]

ECE_BINS = 15
# Probabilities are clipped here before the log: a float32 softmax can round a class to 0.
_EPS = 1e-12


def _labelled(y, proba) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    keep = (y >= 0) & np.isfinite(proba).all(axis=1)
    return y[keep], proba[keep]


def reliability_bins(y, proba, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: rows, mean confidence and accuracy (None when empty).

    `y` holds N class indices (negative: no label, left out), `proba` N×C probabilities.
    """
    y, proba = _labelled(y, proba)
    confidence = proba.max(axis=1) if len(y) else np.zeros(0)
    correct = (proba.argmax(axis=1) == y) if len(y) else np.zeros(0, dtype=bool)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 joins bin 0.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    out: dict = {"edges": np.linspace(0, 1, bins + 1).tolist(), "count": []}
    out["confidence"], out["accuracy"] = [], []
    for i in range(bins):
        in_bin = index == i
        n = int(in_bin.sum())
        out["count"].append(n)
        out["confidence"].append(float(confidence[in_bin].mean()) if n else None)
        out["accuracy"].append(float(correct[in_bin].mean()) if n else None)
    return out


def expected_calibration_error(y, proba, bins: int = ECE_BINS) -> float | None:
    """ECE over `bins` equal-width confidence bins; None when no row has a label."""
    table = reliability_bins(y, proba, bins)
    total = sum(table["count"])
    if total == 0:
        return None
    gaps = [
        n * abs(c - a)
        for n, c, a in zip(table["count"], table["confidence"], table["accuracy"])
        if n
    ]
    return float(sum(gaps) / total)


# Variance of the prior on log T: T within e^±1 (0.37-2.7) at two standard deviations, the
# range fitted temperatures of networks usually fall in.
LOG_T_PRIOR_VAR = 0.25


def fit_temperature(y, proba, *, max_iter: int = 100) -> float:
    """The T > 0 that minimises the NLL of `softmax(log(proba) / T)` on the labelled rows, plus a
    normal prior on log T, mean 0 and variance `LOG_T_PRIOR_VAR` (the MAP estimate).

    `proba` are the model's probabilities at T = 1: their logs equal the logits up to a
    per-row constant, which softmax ignores. Optimised over log T so T stays positive; 1.0 when
    no row has a label (nothing to fit). Why the prior: on a validation split the model gets
    all right (30 rows of a small task), the NLL keeps falling as T goes to 0, and the fitted
    T sharpened a member so far that its few test mistakes cost a log loss of 1.8 (and the
    ensemble, which then weighed it by its perfect validation score, 2.3). The prior's pull is
    1/n of the NLL's scale: on a few hundred rows it moves T by little.
    """
    y, proba = _labelled(y, proba)
    if len(y) == 0:
        return 1.0
    logp = torch.from_numpy(np.log(np.clip(proba, _EPS, 1.0)))
    target = torch.from_numpy(y)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        nll = torch.nn.functional.cross_entropy(logp / log_t.exp(), target)
        loss = nll + log_t.square().sum() / (2 * LOG_T_PRIOR_VAR * len(y))
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    # A degenerate split (every row right with p≈1) drives T towards 0 or infinity.
    return float(np.clip(t, 0.05, 20.0)) if np.isfinite(t) else 1.0


def untempered(proba, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling: `softmax(T · log p)`, exact because the
    log of a softmax is the tempered logits up to a per-row constant."""
    proba = np.asarray(proba, dtype=np.float64)
    if temperature == 1.0:
        return proba
    z = temperature * np.log(np.clip(proba, _EPS, 1.0))
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
