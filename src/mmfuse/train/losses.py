"""Losses for multi-task classification with missing labels, class weights and mixup.

A row may be labelled for some tasks and not others; a missing label is `IGNORE_INDEX` and simply
drops that row from that task's loss. A batch with no label at all for a task contributes nothing
to the total (rather than the NaN that a mean over zero rows would give).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmfuse.model.config import IGNORE_INDEX

LossFn = Callable[[Mapping[str, Tensor]], tuple[Tensor, dict[str, float]]]


def balanced_class_weights(y: Tensor | np.ndarray, n_classes: int) -> Tensor:
    """Per-class weights `n_labelled / (n_classes * count)`, as sklearn's `"balanced"`.

    Rare classes get large weights so each class contributes equally to the loss on average.
    Rows equal to `IGNORE_INDEX` are left out. A class absent from `y` gets 1.0 instead of
    sklearn's error: a small split may miss a class, and its weight never multiplies a row there.
    """
    y = torch.as_tensor(y).reshape(-1)
    y = y[y != IGNORE_INDEX].long().cpu()
    if y.numel() and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"labels must be in [0, {n_classes}) or {IGNORE_INDEX} (missing), got values "
            f"from {int(y.min())} to {int(y.max())}"
        )
    counts = torch.bincount(y, minlength=n_classes).double()
    weights = torch.ones(n_classes, dtype=torch.float64)
    present = counts > 0
    weights[present] = y.numel() / (n_classes * counts[present])
    return weights.float()


def task_loss(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor | None:
    """Cross-entropy of `logits` (B×C) against integer `target` (B), over labelled rows only.

    The mean runs over rows whose target is not `IGNORE_INDEX` (weighted by `weight[target]` when
    class weights are given, as `F.cross_entropy` does). Returns None when no row is labelled.
    """
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}")
    if target.is_floating_point():
        raise TypeError(
            f"target must hold integer class indices (missing = {IGNORE_INDEX}), got {target.dtype}"
        )
    if not bool((target != IGNORE_INDEX).any()):
        return None
    if weight is not None:
        # Weights are computed once on CPU; the logits may live on a GPU or in float64.
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(
        logits,
        target,
        weight=weight,
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def multitask_loss(
    logits: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    *,
    task_weights: Mapping[str, float] | None = None,
    class_weights: Mapping[str, Tensor] | None = None,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum over tasks of `task_loss`, and each task's (unweighted) loss as a float.

    `logits` and `targets` must have the same tasks. A task with no labelled row in the batch is
    left out of both. If no task has one, the total is a zero that still depends on the logits,
    so `backward()` runs (and DDP sees every parameter used) instead of failing.
    """
    if not logits:
        raise ValueError("multitask_loss needs at least one task in `logits`")
    if set(logits) != set(targets):
        raise ValueError(
            f"logits have tasks {sorted(logits)} but targets have {sorted(targets)}; every head "
            "needs a label column (use IGNORE_INDEX for missing labels)"
        )
    task_weights = dict(task_weights or {})
    class_weights = dict(class_weights or {})
    for field, given in (("task_weights", task_weights), ("class_weights", class_weights)):
        unknown = sorted(set(given) - set(logits))
        if unknown:
            raise ValueError(f"`{field}` names unknown task(s) {unknown}; tasks: {sorted(logits)}")
    total: Tensor | None = None
    parts: dict[str, float] = {}
    for task in sorted(logits):
        loss = task_loss(
            logits[task],
            targets[task],
            weight=class_weights.get(task),
            label_smoothing=label_smoothing,
        )
        if loss is None:
            continue
        parts[task] = float(loss.detach())
        weighted = task_weights.get(task, 1.0) * loss
        total = weighted if total is None else total + weighted
    if total is None:
        total = sum(out.sum() * 0 for out in logits.values())
    return total, parts


def mixup_pairs(
    batch_size: int, alpha: float, generator: torch.Generator | None = None
) -> tuple[Tensor, float]:
    """A mixing partner for each row (`perm`) and a weight `lam ~ Beta(alpha, alpha)`.

    `lam` is folded to `max(lam, 1 - lam)` so the original row always dominates: the mix is
    symmetric anyway, and this keeps `x` the main sample for anything that reads it unmixed.
    Both draws come from `generator` (Beta sampled through numpy, seeded from it, because
    `torch.distributions` takes no generator), so a seeded run mixes identically on resume.
    """
    if alpha <= 0:
        raise ValueError(
            f"mixup alpha must be > 0, got {alpha}; set `mixup_alpha` > 0 (0 means no mixup, "
            "so the trainer should not draw pairs at all)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    perm = torch.randperm(batch_size, generator=generator)
    seed = int(torch.randint(2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    return perm, max(lam, 1.0 - lam)


def mix(x: Tensor, perm: Tensor, lam: float) -> Tensor:
    """`lam * x + (1 - lam) * x[perm]` along the batch dimension (dim 0)."""
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(
            f"mixup needs a floating-point tensor, got {x.dtype}; mix features, not labels or "
            "token ids (use mixup_loss for the targets)"
        )
    return lam * x + (1 - lam) * x[perm.to(x.device)]


def mixup_loss(
    loss_fn: LossFn,
    targets: Mapping[str, Tensor],
    perm: Tensor,
    lam: float,
) -> tuple[Tensor, dict[str, float]]:
    """The loss of mixed inputs: `lam * loss_fn(targets) + (1 - lam) * loss_fn(targets[perm])`.

    Mixing the losses rather than one-hot targets keeps integer labels, class weights and
    `IGNORE_INDEX` working unchanged. Per-task floats are combined the same way.
    """
    total_a, parts_a = loss_fn(targets)
    total_b, parts_b = loss_fn({task: y[perm.to(y.device)] for task, y in targets.items()})
    parts = {
        task: lam * parts_a[task] + (1 - lam) * parts_b[task]
        for task in sorted(set(parts_a) & set(parts_b))
    }
    return lam * total_a + (1 - lam) * total_b, parts
