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

import argparse
import gzip
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from mmfuse.errors import MmfuseError
from mmfuse.model.multimodal import MultimodalModel, encoder_input

SCOPES = ("global", "layer")
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
SUMMARY_FILE = "compression.json"


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

    if Path(out_dir).resolve() == Path(model_dir).resolve():
        raise CompressError(
            f"--out {out_dir} is the model folder itself; give another folder so the original "
            "model is kept"
        )
    model, config, train = load_model(model_dir, device)
    layers = apply_pruning(model, amount, scope=scope, embeddings=embeddings)
    log(
        f"pruned {amount:.0%} of {len(layers)} layers' weights ({scope} L1 unstructured): "
        f"sparsity {sparsity(model, layers)['sparsity']:.3f}"
    )
    train_config = TrainConfig.from_dict(train) if train else TrainConfig()
    history = None
    if finetune_manifest is not None:
        backbone_lr = train_config.backbone_lr
        if lr is None and backbone_lr:
            backbone_lr = backbone_lr / 10
        elif lr is not None:
            backbone_lr = None
        tuned = TrainConfig.from_dict(
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
        history = _finetune(model, config, tuned, finetune_manifest, log)
    remove_pruning(layers)
    model.eval()
    stats = sparsity(model, layers)
    emptied = [n for n, v in stats["per_layer"].items() if v >= 0.99]
    if emptied:
        log(
            f"warning: {len(emptied)} layer(s) lost 99% or more of their weights ({emptied[:3]}); "
            "the model can no longer use them. Prune less, or use --scope layer"
        )
    out = save_model(out_dir, model, config, train_config=train_config.to_dict())
    summary = {
        "source": str(Path(model_dir).resolve()),
        "out_dir": str(out),
        "method": f"{scope} L1 unstructured",
        "amount": amount,
        "embeddings": embeddings,
        "finetune": None
        if history is None
        else {"manifest": str(finetune_manifest), "epochs": epochs, "history": history},
        **stats,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    log(
        f"saved {out}: sparsity {stats['sparsity']:.3f} of {stats['pruned_weights']} pruned "
        f"weights, {stats['model_sparsity']:.3f} of all {stats['parameters']} parameters"
    )
    return summary


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
    from mmfuse.infer.dataset import collate

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
        inputs = {
            name: encoder_input(model.encoders[name], value, device)
            for name, value in batch["inputs"].items()
        }
        model(inputs, batch["mask"].to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    return len(norms)


# ---------------------------------------------------------------------------------- report
def gzip_size(path: str | os.PathLike) -> int:
    """Bytes of `path` gzipped (level 6): where unstructured zeros show."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=6, mtime=0))


def compress_report(
    model_dir: str | os.PathLike,
    pruned_dir: str | os.PathLike,
    manifest,
    *,
    repeats: int = 20,
    threads: int | None = None,
) -> list:
    """Size (safetensors, gzipped), torch latency and accuracy of both model folders."""
    from mmfuse.model.saved import WEIGHTS, load_model
    from mmfuse.ship.export import EvalData, measure, torch_runner, torch_threads

    data = EvalData(model_dir, manifest)
    rows = []
    for name, folder in (("original", model_dir), ("pruned", pruned_dir)):
        model, _, _ = load_model(folder)
        weights = Path(folder) / WEIGHTS
        size, packed = weights.stat().st_size, {"gzip": gzip_size(weights)}
        with torch_threads(threads):
            run = torch_runner(model)
            rows.append(measure(name, run, data, size, repeats=repeats, extra=packed))
    return rows


# ---------------------------------------------------------------------------------- CLI
def add_compress_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `mmfuse compress` (the integrator adds the command and --debug)."""
    p.add_argument("model_dir", help="model folder written by `mmfuse train` (its --out)")
    p.add_argument(
        "--prune",
        type=_fraction,
        required=True,
        metavar="AMOUNT",
        help="fraction of the Conv/Linear weights to zero, in [0, 1), e.g. 0.5",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the pruned model folder")
    p.add_argument("--train", metavar="MANIFEST", help="labelled manifest to fine-tune on")
    p.add_argument(
        "--eval",
        metavar="MANIFEST",
        help="labelled manifest: print size, latency and accuracy before and after",
    )
    p.add_argument("--epochs", type=int, default=1, metavar="N", help="fine-tune epochs (1)")
    p.add_argument("--lr", type=float, help="fine-tune learning rate (default: the model's / 10)")
    p.add_argument("--batch-size", type=int, metavar="N", help="default: the model's own")
    p.add_argument(
        "--scope",
        choices=list(SCOPES),
        default="global",
        help="rank weights across all layers (global) or within each layer (default: global)",
    )
    p.add_argument(
        "--embeddings", action="store_true", help="prune embedding tables too (text encoders)"
    )
    p.add_argument("--device", default="cpu", help="fine-tuning device (default: cpu)")
    p.add_argument(
        "--repeats", type=int, default=20, metavar="N", help="timed batch-1 runs (default: 20)"
    )
    p.add_argument("--threads", type=int, metavar="N", help="torch threads in the table")


def _fraction(value: str) -> float:
    try:
        amount = float(value)
    except ValueError:
        amount = -1.0
    if not 0.0 <= amount < 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a fraction in [0, 1), e.g. 0.5")
    return amount


def compress_command(args: argparse.Namespace) -> int:
    """Prune a model folder by weight magnitude, fine-tune it briefly, save a new folder.

    L1 unstructured pruning of the Conv and Linear weights (--scope global: ranked across all
    layers; layer: the same fraction of each), then --epochs of fine-tuning on --train with the
    masks held and fresh BatchNorm statistics from it, then the zeros are made permanent. The new folder loads like any model folder
    and holds compression.json (sparsity per layer). With --eval, prints size (safetensors and
    gzipped: unstructured zeros only show compressed), torch latency and accuracy before and
    after.

    examples:
      mmfuse compress runs/train --prune 0.5 --out runs/pruned --train data/train.csv
      mmfuse compress runs/train --prune 0.7 --out runs/p70 --train data/train.csv \\
          --eval data/val.csv --epochs 2
    """
    if args.train is None:
        print("no --train manifest: pruning without fine-tuning")
    summary = prune_model(
        args.model_dir,
        args.out,
        args.prune,
        finetune_manifest=args.train,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        scope=args.scope,
        embeddings=args.embeddings,
        device=args.device,
    )
    layers = summary["per_layer"]
    low, high = min(layers, key=layers.get), max(layers, key=layers.get)
    print(
        f"per-layer sparsity from {layers[low]:.3f} ({low}) to {layers[high]:.3f} ({high}); "
        f"all of them in {Path(summary['out_dir']) / SUMMARY_FILE}"
    )
    if args.eval:
        from mmfuse.ship.export import format_report

        rows = compress_report(
            args.model_dir, args.out, args.eval, repeats=args.repeats, threads=args.threads
        )
        print(format_report(rows, f"on {args.eval}:"))
    return 0
