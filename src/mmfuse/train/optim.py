"""Optimizer and learning-rate schedule, built from plain config values.

Parameters come in named groups (e.g. a pretrained backbone at a small learning rate and fresh
heads at a larger one). Each group is split in two: weights that get weight decay and 1-D
parameters (biases, norm scales and shifts) that do not. Decay pulls a weight towards zero to
limit its scale; a bias or a norm's gain has no scale to limit (the following layer or norm
undoes it), so decaying it only biases the model towards zero offsets and unit-free gains. This
is the usual split (timm `param_groups_weight_decay`, nanoGPT `configure_optimizers`).

The schedule is a `LambdaLR` whose multiplier is indexed by optimizer step (the trainer calls
`scheduler.step()` after every `optimizer.step()`), so it is independent of the epoch length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from mmfuse.model.config import ModelConfig
from mmfuse.model.multimodal import MultimodalModel
from mmfuse.train.config import TrainConfig

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
# Device types whose fused optimiser kernels torch has and mmfuse trains on.
FUSED_DEVICES = ("cpu", "cuda")


def param_groups(
    named_groups: Mapping[str, tuple[Iterable[tuple[str, nn.Parameter]], float]],
    weight_decay: float,
) -> list[dict]:
    """Optimizer parameter groups: per named group, one decayed and one `<name>/no_decay` group.

    `named_groups` maps a group name to `(named_parameters, lr)`, e.g.
    `{"backbone": (model.encoders.named_parameters(), 1e-5), "head": (model.heads..., 1e-3)}`.
    Every parameter with `ndim <= 1` (biases, norm weights) goes without weight decay.

    Frozen parameters (`requires_grad=False`) are kept: an encoder unfrozen later in training must
    already be in the optimizer, and AdamW/SGD skip parameters whose `.grad` is None meanwhile.
    Empty groups are dropped. A parameter listed twice (e.g. a tied embedding reached from two
    modules) raises ValueError, since torch would otherwise refuse it with no name.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}; set `weight_decay` >= 0")
    seen: dict[int, str] = {}  # id(param) -> "group/name", to name both places of a duplicate
    groups: list[dict] = []
    for group, (named_params, lr) in named_groups.items():
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, param in named_params:
            where = f"{group}/{name}"
            if id(param) in seen:
                raise ValueError(
                    f"parameter {where} is the same tensor as {seen[id(param)]}; list each "
                    "parameter in one group only (a tied weight belongs to one module)"
                )
            seen[id(param)] = where
            (no_decay if param.ndim <= 1 else decay).append(param)
        for suffix, params, wd in (("", decay, weight_decay), ("/no_decay", no_decay, 0.0)):
            if params:
                groups.append(
                    {"params": params, "lr": lr, "weight_decay": wd, "name": group + suffix}
                )
    return groups


def build_optimizer(
    groups: list[dict],
    name: str = "adamw",
    *,
    lr: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """AdamW or SGD (with momentum, no Nesterov) over `groups`; `lr` fills groups that lack one.
    Fused (one kernel a parameter) where every parameter is on one CPU or CUDA device."""
    # The default per-tensor update runs a dozen small ops per parameter: on a CPU that was a
    # tenth of a small model's training step (docs/throughput.md, "Fused optimisers").
    fused = fusable(groups)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=False, fused=fused)
    raise ValueError(
        f"unknown optimizer {name!r}; set the config field `optimizer` to one of {OPTIMIZERS}"
    )


def fusable(groups: list[dict]) -> bool:
    """Whether torch's fused optimiser kernels take these parameters: floating point, all on
    one device of a type that has them (CPU or CUDA here)."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in FUSED_DEVICES
        and all(p.is_floating_point() for p in params)
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str = "cosine",
    total_steps: int,
    warmup_steps: int = 0,
    step_size: int = 1,
    gamma: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """A per-optimizer-step learning-rate multiplier: linear warm-up, then `schedule`.

    Warm-up ramps the multiplier as `(step + 1) / (warmup_steps + 1)`: Adam's second-moment
    estimates are noisy over the first steps and fresh heads send large gradients into a
    pretrained backbone, so a full learning rate at step 0 can wreck it. The ramp never gives 0,
    so the first step is not wasted. After warm-up (`s = step - warmup_steps`):

    - cosine: `min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * p)) / 2` with
      `p = s / (total_steps - warmup_steps)` clamped to 1, reaching `min_lr_ratio` at `total_steps`;
    - step: `gamma ** (s // step_size)`, `step_size` counted in optimizer steps;
    - constant: 1.

    The multiplier is a plain closure, which `LambdaLR.state_dict()` leaves out; a resumed run
    rebuilds the scheduler with the same arguments and loads the state (its step count).
    """
    if schedule not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {schedule!r}; set the config field `schedule` to one of {SCHEDULES}"
        )
    if total_steps < 1:
        raise ValueError(
            f"total_steps must be >= 1, got {total_steps}; check `epochs` and the training set size"
        )
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}; set `warmup_epochs` >= 0")
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1 optimizer step, got {step_size}")
    if not 0 < gamma <= 1:
        raise ValueError(
            f"gamma must be in (0, 1], got {gamma}; it multiplies the lr at each decay"
        )
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    decay_steps = max(1, total_steps - warmup_steps)

    def after_warmup(s: int) -> float:
        if schedule == "cosine":
            progress = min(1.0, s / decay_steps)
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "step":
            return gamma ** (s // step_size)
        return 1.0

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return after_warmup(step - warmup_steps)

    return LambdaLR(optimizer, multiplier)


def optimizer_for(
    model: MultimodalModel, model_config: ModelConfig | None, config: TrainConfig
) -> torch.optim.Optimizer:
    """A fit's optimiser: every encoder that trains at some point at `backbone_lr` (or `lr`),
    the fusion and heads at `lr`; encoders frozen for good are left out."""
    never_trained = set()
    if model_config is not None:
        never_trained = {n for n, s in model_config.inputs.items() if s.mode == "freeze"}
    backbone = [
        (f"encoders.{n}.{p}", w)
        for n in model.names
        if n not in never_trained
        for p, w in model.encoders[n].named_parameters()
    ]
    head = [(n, w) for n, w in model.named_parameters() if not n.startswith("encoders.")]
    groups = param_groups(
        {"backbone": (backbone, config.backbone_lr or config.lr), "head": (head, config.lr)},
        config.weight_decay,
    )
    return build_optimizer(groups, config.optimizer, lr=config.lr, momentum=config.momentum)


def scheduler_for(optimizer, config: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """A fit's schedule, with `config`'s epochs turned into optimiser steps."""
    return build_scheduler(
        optimizer,
        schedule=config.schedule,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        step_size=max(1, config.step_epochs * steps_per_epoch),
        gamma=config.gamma,
        min_lr_ratio=config.min_lr_ratio,
    )


def head_lr(optimizer) -> float:
    """The fusion and heads' rate, i.e. `lr` as scheduled."""
    # Group 0 is the encoders' group whenever one is trained, which would log `backbone_lr`
    # under the name `lr`.
    for group in optimizer.param_groups:
        if group.get("name", "").split("/")[0] == "head":
            return group["lr"]
    return optimizer.param_groups[0]["lr"]
