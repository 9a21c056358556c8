"""`mmfuse train`'s ensemble and calibration flags (--ensemble, --monitor, --no-calibrate), and
the members table it prints after an ensemble's training."""

from __future__ import annotations

import argparse

from mmfuse.cli.common import UsageError


def add_ensemble_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="KEY=VALUES",
        help="train an ensemble: fusion=attention,gated,late | preset=fast,medium | seeds=3 | "
        "image=efficientnet-lite0,efficientnet-lite2 (a modality: its encoders; pretrained ones "
        "under medium) (repeatable; members are every combination), weighted on --val by bagged greedy "
        "selection when it has 200 labelled rows or more and beats equal weights on them by 4 "
        "standard errors, else equally (weights=selected or weights=equal to choose); folds=5 trains each member on 5 folds of the training and "
        "--val rows pooled and weighs them on out-of-fold predictions (groups=COLUMN keeps rows "
        "of one value in one fold; --modality COLUMN=ignore keeps it out of the model); jobs=2 "
        "trains two members or fold models at a time",
    )
    p.add_argument(
        "--monitor",
        metavar="METRIC",
        help="validation metric that picks the best epoch and the ensemble weights: log_loss, "
        "accuracy, balanced_accuracy or f1_macro (default: accuracy for epochs, log_loss for "
        "ensemble weights)",
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="keep the raw probabilities (default: temperature scaling fitted on --val)",
    )


def members_table(evaluation: dict) -> str:
    """An ensemble's members beside it: weight, accuracy, log loss (first task)."""

    def first(m: dict) -> dict:
        return m if "accuracy" in m else next(iter(m.values()))

    rows = [
        (n, evaluation["weights"].get(n, 0.0), first(m)) for n, m in evaluation["members"].items()
    ]
    rows.append(("ensemble", 1.0, first(evaluation["metrics"])))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'model':<{width}}  weight  accuracy  log loss"]
    for name, weight, m in rows:
        lines.append(f"{name:<{width}}  {weight:6.3f}  {m['accuracy']:8.4f}  {m['log_loss']:8.4f}")
    return "\n".join(lines)


def apply_ensemble_flags(params: dict, args: argparse.Namespace) -> None:
    """--ensemble, --monitor and --no-calibrate, checked before any data loads."""
    from mmfuse.model.config import ConfigError
    from mmfuse.train.ensemble_spec import parse_ensemble, selection_metric

    options = dict(params.get("train_options") or {})
    if args.monitor:
        name = args.monitor.removeprefix("val_")
        options["monitor"] = "val_loss" if name in ("loss", "log_loss") else f"val_{name}"
    if args.no_calibrate:
        options["calibrate"] = False
    if options:
        params["train_options"] = options
    if args.ensemble:
        params["ensemble"] = list(args.ensemble)
    if params.get("ensemble") is None:
        return
    try:
        spec = parse_ensemble(params["ensemble"])
        spec.members(params.get("fusion", "attention"), params.get("preset"), 0)
        selection_metric(options.get("monitor"))
    except ConfigError as e:
        raise UsageError(f"--ensemble: {e}") from None
