"""One optimisation step: a batch to the device, modality dropout, mixup or FGSM, the multitask
loss, backward, clipping, the optimiser and scheduler steps.

Modality dropout and mixup draw from the run's own generator, in that order, once per step, so
a resumed run (which restores the generator) replays the same draws.

A step whose loss or gradient norm is not finite changes nothing: one NaN would otherwise reach
every weight through the optimiser, and the model would be lost for good. That includes the
buffers the forward pass already updated (batch norm's running statistics), which are put
back. The caller learns why from `StepResult` and decides what to report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mmfuse.distributed import DistInfo
from mmfuse.features.batched import FrontEnd
from mmfuse.fusion.modality_dropout import drop_modalities
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.infer.engine import autocast, to_device
from mmfuse.model.config import ModelConfig
from mmfuse.model.multimodal import MultimodalModel
from mmfuse.train.config import TrainConfig
from mmfuse.train.losses import (
    balanced_class_weights,
    mix,
    mixup_loss,
    mixup_pairs,
    multitask_loss,
)
from mmfuse.train.profile import StageClock


class BufferSnapshot:
    """The model's buffers (batch norm's running statistics) as they were before a step's
    forward pass, to put back when the step is skipped. The copies are kept from step to step
    and refreshed in one `_foreach_copy_`: a clone per buffer was two dozen small allocations
    and copies a step, each costing more inside a fit than the copying itself."""

    def __init__(self):
        self._live: list[Tensor] = []
        self._saved: list[Tensor] = []

    @torch.no_grad()
    def take(self, model: torch.nn.Module) -> BufferSnapshot:
        live = list(model.buffers())
        if [(b.shape, b.dtype, b.device) for b in live] != [
            (b.shape, b.dtype, b.device) for b in self._saved
        ]:
            self._saved = [b.detach().clone() for b in live]
        elif live:
            torch._foreach_copy_(self._saved, live)
        self._live = live
        return self

    @torch.no_grad()
    def restore(self) -> None:
        """Every buffer back to its value at `take`."""
        if self._live:
            torch._foreach_copy_(self._live, self._saved)


@dataclass
class StepContext:
    """What every step of one fit shares."""

    net: torch.nn.Module  # what steps call: the model, or its DDP wrapper (re-made each epoch)
    model: MultimodalModel  # its encoders tokenize text and say what their inputs are
    device: torch.device
    config: TrainConfig
    rng: torch.Generator  # modality dropout and mixup
    cached: set[str]  # inputs whose batches carry cached features instead of raw data
    frontend: FrontEnd | None = None  # finishes the training set's staged inputs per batch
    modality_dropout: float = 0.0
    task_weights: dict[str, float] | None = None
    class_weights: dict[str, Tensor] | None = None
    dist: DistInfo | None = None  # under DDP, every rank must agree to skip a step
    clock: StageClock = field(default_factory=StageClock)  # the profile (off: times nothing)
    buffers: BufferSnapshot = field(default_factory=BufferSnapshot)  # for a skipped step

    @classmethod
    def for_fit(
        cls,
        model: MultimodalModel,
        model_config: ModelConfig | None,
        config: TrainConfig,
        train: MultimodalDataset,
        device: torch.device,
        rng: torch.Generator,
        dist: DistInfo | None = None,
    ) -> StepContext:
        """The context of a fit on `train`, whose cached features are already attached."""
        class_weights = None
        if config.class_weights == "balanced":
            class_weights = {
                t: balanced_class_weights(train.labels[t], len(train.tasks[t])).to(device)
                for t in model.tasks
            }
        return cls(
            net=model,
            model=model,
            device=device,
            config=config,
            rng=rng,
            cached=set(train.features),
            frontend=train.frontend(),
            modality_dropout=model_config.fusion.modality_dropout if model_config else 0.0,
            task_weights=task_weights(model_config),
            class_weights=class_weights,
            dist=dist,
        )


def task_weights(model_config: ModelConfig | None) -> dict[str, float] | None:
    """Each head's weight in the multitask loss (None: every task weighs 1)."""
    if model_config is None:
        return None
    return {h.task: h.weight for h in model_config.heads}


@dataclass
class StepResult:
    loss: float  # the batch's mean loss (NaN or Inf when that is why it was skipped)
    stepped: bool  # False: weights, optimiser and schedule are as they were
    why: str = ""  # when skipped: "the loss is NaN", "the gradient norm is inf", ...
    elsewhere: bool = False  # skipped because another DDP process's loss was not finite


def train_step(ctx: StepContext, batch: dict, optimizer, scheduler) -> StepResult:
    """Train on one batch, unless its loss or gradient norm is not finite."""
    cfg, clock = ctx.config, ctx.clock
    inputs = _finished_inputs(ctx, batch)
    with clock.stage("to_device"):
        inputs, features, mask, labels = _batch_to_device(ctx, inputs, batch)
    buffers = ctx.buffers.take(ctx.model)
    if ctx.modality_dropout > 0:
        mask = drop_modalities(mask, ctx.modality_dropout, ctx.rng)
    with clock.stage("forward"):
        if cfg.mixup_alpha > 0 and len(mask) > 1:
            loss = _mixup_loss(ctx, inputs, features, mask, labels)
        else:
            loss = _clean_loss(ctx, inputs, features, mask, labels)
    value = float(loss.detach())
    # Checked before backward: under DDP a rank that skipped backward alone would leave the
    # others waiting in its gradient all-reduce forever.
    if not _all_finite(ctx, value):
        buffers.restore()
        if math.isfinite(value):
            return StepResult(value, False, "the loss on another process is not finite", True)
        return StepResult(value, False, f"the loss is {_describe(value)}")
    optimizer.zero_grad(set_to_none=True)
    with clock.stage("backward"):
        loss.backward()
    with clock.stage("optimizer"):
        return _optimizer_step(ctx, value, buffers, optimizer, scheduler)


def _optimizer_step(ctx: StepContext, value: float, buffers, optimizer, scheduler) -> StepResult:
    """Clip, then step, unless the gradient norm is not finite."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if ctx.config.grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(params, ctx.config.grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    # Gradients are already averaged across ranks here, so every rank sees the same norm.
    if not math.isfinite(float(norm)):
        optimizer.zero_grad(set_to_none=True)
        buffers.restore()
        return StepResult(value, False, f"the gradient norm is {_describe(float(norm))}")
    optimizer.step()
    scheduler.step()
    return StepResult(value, True)


def _all_finite(ctx: StepContext, value: float) -> bool:
    finite = math.isfinite(value)
    if ctx.dist is None or not ctx.dist.enabled:
        return finite
    # On the step's device: NCCL reduces CUDA tensors only.
    bad = torch.tensor([0.0 if finite else 1.0], device=ctx.device)
    torch.distributed.all_reduce(bad)
    return float(bad) == 0.0


def _describe(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value}"


def _finished_inputs(ctx: StepContext, batch: dict) -> dict:
    """The batch's inputs with the staged ones moved as they are (uint8 pixels, waveforms) and
    finished on the device, one call per input: the profile's "frontend" stage."""
    inputs = batch["inputs"]
    if ctx.frontend is None:
        return inputs
    with ctx.clock.stage("to_device"):
        inputs = ctx.frontend.to_device(inputs, ctx.device)
    with ctx.clock.stage("frontend"):
        return ctx.frontend.finish(inputs, batch["mask"])


def _batch_to_device(
    ctx: StepContext, inputs: dict, batch: dict
) -> tuple[dict, dict, Tensor, dict]:
    """Split a batch into raw inputs and cached features, on the device; tokenize text."""
    inputs, features = to_device(
        ctx.model,
        inputs,
        ctx.device,
        cached=ctx.cached,
        channels_last=ctx.config.channels_last,
    )
    mask = batch["mask"].to(ctx.device)
    labels = {t: y.to(ctx.device) for t, y in batch["labels"].items()}
    return inputs, features, mask, labels


def _loss_fn(ctx: StepContext, inputs, features, mask):
    """Forward once; the loss of those logits against any targets."""
    with autocast(ctx.device, ctx.config.precision):
        logits = ctx.net(inputs, mask, features)
    logits = {t: v.float() for t, v in logits.items()}
    return lambda targets: multitask_loss(
        logits,
        targets,
        task_weights=ctx.task_weights,
        class_weights=ctx.class_weights,
        label_smoothing=ctx.config.label_smoothing,
    )


def _mixup_loss(ctx: StepContext, inputs, features, mask, labels) -> Tensor:
    """Zhang et al.'s mixup: rows mixed with a shuffled copy of the batch, labels likewise."""
    perm, lam = mixup_pairs(len(mask), ctx.config.mixup_alpha, ctx.rng)
    perm = perm.to(ctx.device)
    inputs = {n: mix(x, perm, lam) if _is_float(x) else x for n, x in inputs.items()}
    features = {
        n: mix(_absent_as_mean(ctx.model, n, x, mask), perm, lam) for n, x in features.items()
    }
    mask = mask | mask[perm]
    loss, _ = mixup_loss(_loss_fn(ctx, inputs, features, mask), labels, perm, lam)
    return loss


def _absent_as_mean(model: MultimodalModel, name: str, x: Tensor, mask: Tensor) -> Tensor:
    """Cached features of a standardised input with its absent rows (zeros) set to the
    training mean, which standardises to 0: a row mixed with an absent one then lands between
    the row and 0 after scaling, as unscaled inputs do, not tens of deviations away."""
    if name not in model.scalers:
        return x
    scaler = model.scalers[name]
    present = mask[:, model.names.index(name)][:, None]  # B×1
    return torch.where(present, x, scaler.mean.to(x.dtype))


def _clean_loss(ctx: StepContext, inputs, features, mask, labels) -> Tensor:
    """The loss of the batch as it is, averaged with FGSM's when `fgsm_epsilon` > 0."""
    attacked = []
    if ctx.config.fgsm_epsilon > 0:
        attacked = [n for n, x in inputs.items() if _is_float(x)]
    for n in attacked:
        inputs[n].requires_grad_(True)
    loss, _ = _loss_fn(ctx, inputs, features, mask)(labels)
    if attacked:
        loss = _with_fgsm(ctx, loss, inputs, features, mask, labels, attacked)
    return loss


def _with_fgsm(ctx: StepContext, loss, inputs, features, mask, labels, names) -> Tensor:
    """Goodfellow et al.'s FGSM: also train on x + ε·sign(∇ₓ loss), half weight each."""
    # allow_unused: an input that no row of this batch has is never encoded, so it has no
    # gradient (None) and is left as it is.
    grads = torch.autograd.grad(
        loss, [inputs[n] for n in names], retain_graph=True, allow_unused=True
    )
    adversarial = dict(inputs)
    for n, g in zip(names, grads):
        if g is not None:
            adversarial[n] = (inputs[n] + ctx.config.fgsm_epsilon * g.sign()).detach()
    adv_loss, _ = _loss_fn(ctx, adversarial, features, mask)(labels)
    return 0.5 * (loss + adv_loss)


def _is_float(x) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point()
