"""`mmfuse compress`: magnitude pruning, a short fine-tune, and a before/after table."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmfuse.cli.common import EXIT_OK, add_device_flag, add_model_dir, model_folder, resolve_device
from mmfuse.ship.options import SCOPES, SUMMARY_FILE


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_dir(p)
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
    add_device_flag(p, "cpu", "fine-tuning")
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


def run(args: argparse.Namespace) -> int:
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
    from mmfuse.ship.measure import compress_report, format_report
    from mmfuse.ship.prune import prune_model

    model_folder(args.model_dir)
    device = resolve_device(args.device, "cpu")
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
        device=device,
    )
    layers = summary["per_layer"]
    low, high = min(layers, key=layers.get), max(layers, key=layers.get)
    print(
        f"per-layer sparsity from {layers[low]:.3f} ({low}) to {layers[high]:.3f} ({high}); "
        f"all of them in {Path(summary['out_dir']) / SUMMARY_FILE}"
    )
    if args.eval:
        rows = compress_report(
            args.model_dir, args.out, args.eval, repeats=args.repeats, threads=args.threads
        )
        print(format_report(rows, f"on {args.eval}:"))
    return EXIT_OK
