"""The one inference path: collated batches in, class probabilities out.

Training's validation, `evaluate`, `MultimodalClassifier.predict_proba`, `mmfuse predict`, the
service, batch prediction and the export parity check all predict through `forward` (one
batch) or `predict_batches` (a loader of batches), so a row gets the same probabilities
whichever of them asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mmfuse import distributed
from mmfuse.features.batched import FrontEnd, Staged
from mmfuse.infer.batch import batches_of, row_loader
from mmfuse.infer.dataset import MultimodalDataset, Skipped, StagedView
from mmfuse.model.multimodal import MultimodalModel, encoder_input

# `{variant: {input name: kept?}}`: the same encoded batch scored under several presence masks.
Variants = Mapping[str, Mapping[str, bool]]
# `(logits {task: B×C float}, labels {task: B}) → scalar loss`, for a validation loss.
LossFn = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]


@dataclass
class Output:
    probabilities: dict[str, Tensor]  # task → B×C float32 on the CPU
    weights: Tensor | None = None  # B×M per-input fusion weights, when the method has them


def autocast(device: torch.device, precision: str = "fp32"):
    """bf16 autocast on `device` when `precision == "bf16"`, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def to_device(
    model: MultimodalModel,
    inputs: Mapping[str, object],
    device: torch.device | str | None,
    *,
    cached: Iterable[str] = (),
    channels_last: bool = False,
) -> tuple[dict, dict]:
    """A batch's inputs on `device`, text tokenized → `(raw inputs, cached features)`.

    Inputs named in `cached` hold feature-cache vectors (B×D), which skip their encoder.
    """
    cached = set(cached)
    raw, features = {}, {}
    for name, value in inputs.items():
        if isinstance(value, Staged):
            raise TypeError(
                f"input {name!r} is staged (a StagedView's batch); finish it first with "
                "the dataset's frontend() (predict_batches(..., frontend=...))"
            )
        value = encoder_input(model.encoders[name], value, device)
        image_like = isinstance(value, Tensor) and value.dim() == 4
        if channels_last and image_like and name not in cached:
            value = value.contiguous(memory_format=torch.channels_last)
        (features if name in cached else raw)[name] = value
    return raw, features


@torch.no_grad()
def forward(
    model: MultimodalModel,
    inputs: Mapping[str, object],
    mask: Tensor,
    *,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    features: Mapping[str, Tensor] | None = None,
    return_weights: bool = False,
) -> Output:
    """One collated batch (`collate(...)["inputs"]`, B×M `mask`) → per-task probabilities.

    `model.eval()` is the caller's business (a served model is put in eval mode once).
    """
    device = torch.device(device) if device is not None else _device_of(model)
    raw, _ = to_device(model, inputs, device)
    mask = mask.to(device)
    return_weights = return_weights and getattr(model.fusion, "has_weights", False)
    with autocast(device, precision):
        out = model(raw, mask, features, return_weights=return_weights)
    logits, weights = out if return_weights else (out, None)
    probas = {t: lg.float().softmax(-1).cpu() for t, lg in logits.items()}
    return Output(probas, weights.float().cpu() if weights is not None else None)


@torch.no_grad()
def predict_batches(
    model: MultimodalModel,
    batches: Iterable[dict],
    classes: Mapping[str, int],
    *,
    device: torch.device,
    precision: str = "fp32",
    variants: Variants | None = None,
    cached: Iterable[str] = (),
    channels_last: bool = False,
    loss_fn: LossFn | None = None,
    frontend: FrontEnd | None = None,
) -> dict:
    """Probabilities for every row of `batches` (collated, e.g. from a DataLoader).

    `classes` is `{task: number of classes}`. Under `variants` each batch is encoded once and
    classified under each presence mask; a row left with no input gets NaN probabilities.
    Returns `{"rows", "labels": {task: N}, "proba": {variant or "all": {task: N×C}}, "loss",
    "loss_rows", "skipped"}` (loss: the mean of `loss_fn` over fully scored batches).
    `frontend` finishes staged inputs (a `StagedView`'s) on `device`, a batch at a time.
    """
    tasks = list(classes)
    variants = variants or {"all": {n: True for n in model.names}}
    first = next(iter(variants))
    rows, ys = [], {t: [] for t in tasks}
    probas = {v: {t: [] for t in tasks} for v in variants}
    skipped: list[Skipped] = []
    loss_sum, loss_n = 0.0, 0
    for batch in batches:
        skipped.extend(batch["skipped"])
        if "inputs" not in batch:
            continue
        inputs = frontend(batch["inputs"], batch["mask"], device) if frontend else batch["inputs"]
        inputs, features = to_device(
            model, inputs, device, cached=cached, channels_last=channels_last
        )
        mask = batch["mask"].to(device)
        labels = {t: y.to(device) for t, y in batch["labels"].items()}
        with autocast(device, precision):
            encoded = model.encode(inputs, mask, features)
        for variant, kept in variants.items():
            out, logits = _classify(model, encoded, mask, kept, classes, device, precision)
            for t in tasks:
                probas[variant][t].append(out[t])
            if loss_fn is not None and variant == first and logits is not None:
                loss_sum += float(loss_fn(logits, labels)) * len(mask)
                loss_n += len(mask)
        rows.append(batch["rows"])
        for t in tasks:
            if t in batch["labels"]:  # an unlabelled manifest (prediction) has none
                ys[t].append(batch["labels"][t])
    return {
        "rows": _cat(rows),
        "labels": {t: _cat(ys[t]) for t in tasks},
        "proba": {v: {t: _cat(ps) for t, ps in probas[v].items()} for v in variants},
        "loss": loss_sum / loss_n if loss_n else None,
        "loss_rows": loss_n,
        "skipped": skipped,
    }


def _classify(model, encoded, mask, kept, classes, device, precision):
    """One variant of an encoded batch → `(probabilities {task: B×C, NaN rows left empty},
    float logits when every row had an input, else None)`."""
    feats, tokens, token_mask = encoded
    vmask = mask & torch.tensor([kept.get(n, True) for n in model.names], device=mask.device)
    ok = vmask.any(dim=1)
    out = {t: torch.full((len(mask), c), float("nan")) for t, c in classes.items()}
    if not ok.any():
        return out, None
    sub = ok.nonzero().flatten()
    with autocast(device, precision):
        logits = model.classify(
            {n: f[sub] for n, f in feats.items()},
            vmask[sub],
            {n: t[sub] for n, t in tokens.items()},
            {n: t[sub] for n, t in token_mask.items()},
        )
    for t, lg in logits.items():
        out[t][sub.cpu()] = lg.float().softmax(-1).cpu()
    return out, {t: lg.float() for t, lg in logits.items()} if ok.all() else None


@dataclass
class PredictOptions:
    """How `predict_dataset` runs: batch size, decoding processes, device and precision."""

    batch_size: int = 64
    workers: int | str = 0  # or "auto": the cores left after this process (`row_loader`)
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    seed: int = 0  # seeds the DataLoader's own generator, never the global RNG


def predict_dataset(
    model: MultimodalModel,
    dataset: MultimodalDataset,
    options: PredictOptions | None = None,
    *,
    variants: Variants | None = None,
    loss_fn: LossFn | None = None,
    dist: distributed.DistInfo | None = None,
) -> dict:
    """`predict_batches` over a dataset in row order; under torchrun (`dist`) each rank scores
    every world-th row and the pieces are gathered, so every rank returns the whole result."""
    opt = options or PredictOptions()
    device = torch.device(opt.device)
    dist = dist or distributed.DistInfo()
    model = model.to(device)
    model.eval()
    order = distributed.rank_slice(list(range(len(dataset))), dist, pad=False)
    # Log-mel and normalisation run per batch on `device` (`features.batched`).
    batches = row_loader(
        StagedView(dataset),
        batches_of(order, opt.batch_size),
        workers=opt.workers,
        seed=opt.seed,
        device=device,
    )
    result = predict_batches(
        model,
        batches,
        {t: len(c) for t, c in dataset.tasks.items()},
        device=device,
        precision=opt.precision,
        variants=variants,
        cached=set(dataset.features),
        channels_last=opt.channels_last,
        loss_fn=loss_fn,
        frontend=dataset.frontend(),
    )
    if dist.enabled:
        result = merge_predictions(distributed.gather(dist, result))
    return result


def merge_predictions(parts: Sequence[dict]) -> dict:
    """One `predict_batches` result from every rank's share, in row order."""
    parts = [p for p in parts if len(p["rows"])] or list(parts[:1])
    rows = np.concatenate([p["rows"] for p in parts])
    order = np.argsort(rows, kind="stable")
    first = parts[0]
    loss_rows = sum(p["loss_rows"] for p in parts)
    loss = sum((p["loss"] or 0.0) * p["loss_rows"] for p in parts)
    joined = lambda get: np.concatenate([get(p) for p in parts])[order]  # noqa: E731
    return {
        "rows": rows[order],
        "labels": {t: joined(lambda p, t=t: p["labels"][t]) for t in first["labels"]},
        "proba": {
            v: {t: joined(lambda p, v=v, t=t: p["proba"][v][t]) for t in first["proba"][v]}
            for v in first["proba"]
        },
        "loss": loss / loss_rows if loss_rows else None,
        "loss_rows": loss_rows,
        "skipped": [s for p in parts for s in p["skipped"]],
    }


def _cat(xs: list[Tensor]) -> np.ndarray:
    return torch.cat(xs).numpy() if xs else np.zeros(0)


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
