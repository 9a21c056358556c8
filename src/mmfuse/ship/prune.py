"""Magnitude pruning of a saved model, a short fine-tune, and a plain model folder out.

    summary = prune_model("model/", "model-pruned/", 0.5, finetune_manifest="train.csv")
    summary["sparsity"]        # zeros / weights over the pruned Conv and Linear weights

L1 unstructured pruning (`torch.nn.utils.prune`) zeroes the smallest-magnitude weights of every
Conv and Linear layer: `scope="global"` ranks all those weights together, so big, redundant
layers lose more than small ones; `scope="layer"` removes `amount` of each layer. With
`embeddings=True` each embedding table also loses `amount` of its entries, ranked within the
table (its N(0, 1) entries would otherwise outrank every conv weight and empty whole layers).

The masks stay attached while the model is fine-tuned with the project's `Trainer` (pruned
weights get no gradient through the mask and stay zero); the BatchNorm statistics are then
recomputed on the same rows, `prune.remove` bakes the zeros in, and `save_model` writes a normal
folder that loads like any other (`MultimodalClassifier.load`, `Predictor`, `mmfuse export`).

Unstructured zeros do not shrink a dense safetensors file or speed up dense kernels: the gain
shows in the compressed size (the report adds a gzip column) and needs a sparse runtime to turn
into speed. Structured (channel) pruning is the tool for latency.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from mmfuse.errors import MmfuseError
from mmfuse.model.multimodal import MultimodalModel
from mmfuse.ship.options import SCOPES, SUMMARY_FILE

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


class CompressError(MmfuseError, ValueError):
    """A bad pruning option (amount, scope) or a model with nothing to prune."""


def prunable_weights(
    model: MultimodalModel, *, embeddings: bool = False
) -> list[tuple[str, nn.Module]]:
    """`(module name, module)` of every Conv/Linear (and embedding) layer, in model order."""
    kinds = PRUNABLE + (EMBEDDINGS if embeddings else ())
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def apply_pruning(
    model: MultimodalModel,
    amount: float,
    *,
    scope: str = "global",
    embeddings: bool = False,
) -> list[tuple[str, nn.Module]]:
    """Attach L1-unstructured masks to the model's weights; return the pruned layers."""
    if not 0.0 <= amount < 1.0:
        raise CompressError(f"amount must be in [0, 1), got {amount!r}; e.g. --prune 0.5")
    if scope not in SCOPES:
        raise CompressError(f"scope must be one of {list(SCOPES)}, got {scope!r} (--scope)")
    layers = prunable_weights(model, embeddings=embeddings)
    if not layers:
        raise CompressError(
            "the model has no Conv, Linear or embedding layer to prune; nothing to do"
        )
    # Embedding tables are pruned table by table even under "global": their N(0, 1) rows sit
    # far above conv/linear weights, so one global ranking would empty whole conv layers.
    ranked_together = [m for _, m in layers if scope == "global" and isinstance(m, PRUNABLE)]
    if ranked_together:
        prune.global_unstructured(
            [(m, "weight") for m in ranked_together],
            pruning_method=prune.L1Unstructured,
            amount=amount,
        )
    for _, m in layers:
        if not prune.is_pruned(m):
            prune.l1_unstructured(m, "weight", amount=amount)
    return layers


def remove_pruning(layers: list[tuple[str, nn.Module]]) -> None:
    """Make the masks permanent: `weight = weight_orig * weight_mask`, a plain parameter again."""
    for _, m in layers:
        if prune.is_pruned(m):
            prune.remove(m, "weight")


def sparsity(model: MultimodalModel, layers: list[tuple[str, nn.Module]]) -> dict:
    """Zeros among the pruned weights (overall and per layer) and among all parameters."""
    per_layer, zeros, total = {}, 0, 0
    for name, m in layers:
        w = m.weight.detach()
        z = int((w == 0).sum())
        per_layer[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    params = [p.detach() for p in model.parameters()]
    all_zeros = sum(int((p == 0).sum()) for p in params)
    all_total = sum(p.numel() for p in params)
    return {
        "sparsity": zeros / total,
        "pruned_weights": total,
        "zeros": zeros,
        "model_sparsity": all_zeros / all_total,
        "parameters": all_total,
        "per_layer": per_layer,
    }


def prune_model(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    amount: float = 0.5,
    *,
    finetune_manifest=None,
    epochs: int = 1,
    lr: float | None = None,
    batch_size: int | None = None,
    scope: str = "global",
    embeddings: bool = False,
    device: str = "cpu",
    log=print,
) -> dict:
    """Prune `amount` of the weights, fine-tune on `finetune_manifest` (if given), save.

    Fine-tuning reuses the model's saved TrainConfig with `epochs`, a tenth of its learning rate
    unless `lr` is given, no warm-up and no early stopping; it runs in a temporary run folder.
    Writes a normal model folder at `out_dir` plus `compression.json`; returns that summary.
    """
    from mmfuse.model.saved import load_model, save_model
    from mmfuse.train.config import TrainConfig

    _check_out(model_dir, out_dir)
    model, config, train = load_model(model_dir, device)
    layers = apply_pruning(model, amount, scope=scope, embeddings=embeddings)
    log(
        f"pruned {amount:.0%} of {len(layers)} layers' weights ({scope} L1 unstructured): "
        f"sparsity {sparsity(model, layers)['sparsity']:.3f}"
    )
    train_config = TrainConfig.from_dict(train) if train else TrainConfig()
    history = None
    if finetune_manifest is not None:
        tuned = finetune_config(train_config, epochs, lr, batch_size, device)
        history = _finetune(model, config, tuned, finetune_manifest, log)
    remove_pruning(layers)
    model.eval()
    stats = sparsity(model, layers)
    _warn_emptied(stats["per_layer"], log)
    out = save_model(out_dir, model, config, train_config=train_config.to_dict())
    finetune = None
    if history is not None:
        finetune = {"manifest": str(finetune_manifest), "epochs": epochs, "history": history}
    method = {"method": f"{scope} L1 unstructured", "amount": amount, "embeddings": embeddings}
    return _write_summary(model_dir, out, {**method, "finetune": finetune, **stats}, log)


def _write_summary(model_dir, out: Path, fields: dict, log) -> dict:
    """`compression.json` in the pruned folder: source, method, fine-tune history, sparsity."""
    summary = {"source": str(Path(model_dir).resolve()), "out_dir": str(out), **fields}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    log(
        f"saved {out}: sparsity {summary['sparsity']:.3f} of {summary['pruned_weights']} pruned "
        f"weights, {summary['model_sparsity']:.3f} of all {summary['parameters']} parameters"
    )
    return summary


def _check_out(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    if Path(out_dir).resolve() == Path(model_dir).resolve():
        raise CompressError(
            f"--out {out_dir} is the model folder itself; give another folder so the original "
            "model is kept"
        )


def finetune_config(train_config, epochs: int, lr: float | None, batch_size, device: str):
    """The model's TrainConfig for a short fine-tune: a tenth of its learning rates unless `lr`
    is given (which then applies to the backbone too), no warm-up, early stopping or logging."""
    from mmfuse.train.config import TrainConfig

    backbone_lr = train_config.backbone_lr
    if lr is None and backbone_lr:
        backbone_lr = backbone_lr / 10
    elif lr is not None:
        backbone_lr = None
    return TrainConfig.from_dict(
        {
            **train_config.to_dict(),
            "epochs": epochs,
            "lr": lr if lr is not None else train_config.lr / 10,
            "backbone_lr": backbone_lr,
            "batch_size": batch_size or train_config.batch_size,
            "warmup_epochs": 0.0,
            "patience": None,
            "checkpoint_every": None,
            "device": device,
            "progress": False,
            "tensorboard": False,
        }
    )


def _warn_emptied(per_layer: dict[str, float], log) -> None:
    emptied = [n for n, v in per_layer.items() if v >= 0.99]
    if emptied:
        log(
            f"warning: {len(emptied)} layer(s) lost 99% or more of their weights ({emptied[:3]}); "
            "the model can no longer use them. Prune less, or use --scope layer"
        )


def _finetune(model, config, train_config, manifest, log) -> list[dict]:
    """A short fit of the (masked) model with the project's Trainer, in a throw-away run folder,
    then fresh BatchNorm statistics from the same rows without augmentation."""
    from mmfuse.data.manifest import read_manifest
    from mmfuse.train.run import dataset_for
    from mmfuse.train.trainer import Trainer

    roles = {spec.column: spec.modality for spec in config.inputs.values()}
    if not hasattr(manifest, "frame"):
        labels = [h.task for h in config.heads]
        manifest = read_manifest(manifest, label=labels, modalities=roles)
    with tempfile.TemporaryDirectory(prefix="mmfuse-finetune-") as run_dir:
        trainer = Trainer(model, train_config, run_dir, model_config=config, log=log)
        train_set = dataset_for(manifest, model, config, train_config, train=True)
        fit = trainer.fit(train_set)
    plain = dataset_for(manifest, model, config, train_config, train=False)
    calibrated = recalibrate_batchnorm(model, plain, train_config.batch_size)
    if calibrated:
        log(f"recomputed the statistics of {calibrated} BatchNorm layers on {manifest.source}")
    return [{k: v for k, v in r.items() if k in ("epoch", "train_loss", "lr")} for r in fit.history]


@torch.no_grad()
def recalibrate_batchnorm(model: MultimodalModel, dataset, batch_size: int = 32) -> int:
    """Recompute the running mean/var of every trainable BatchNorm layer over `dataset`.

    Pruning shifts each conv's output statistics, and a short fine-tune (momentum 0.1, a few
    steps) leaves the running averages mostly those of the unpruned model: the eval-mode model
    then scores near chance though its training loss is low. Frozen encoders stay in eval mode
    and keep theirs. Returns the number of layers recomputed.
    """
    from mmfuse.infer.batch import collate
    from mmfuse.infer.engine import forward

    model.train()  # frozen encoders stay in eval mode (Encoder.train)
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    for batch in loader:
        if "inputs" not in batch:  # no row of this batch could be loaded
            continue
        forward(model, batch["inputs"], batch["mask"], device=device)  # train mode: stats update
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    return len(norms)
