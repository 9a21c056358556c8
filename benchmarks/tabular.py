"""Does fusing numbers and categories with an image beat each alone? avdigits with its tabular
columns (`weight`, numeric; `ink`, categorical), test accuracy side by side.

Trains `MultimodalClassifier(preset=--preset)` (default: the classifier's default) on the same avdigits split with the image alone,
the two table columns alone, and image + weight + ink fused (the other columns ignored), then
prints test accuracy, fit time and, for the fused model, the ablation on the test split.

    python benchmarks/tabular.py                               # avdigits 1500, default preset
    python benchmarks/tabular.py --preset fast --train-rows 500 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from mmfuse import MultimodalClassifier
from mmfuse.data import read_manifest
from mmfuse.data.avdigits import ensure_avdigits

COLUMNS = ("image", "audio", "video", "text", "weight", "ink")
RUNS = {
    "image": ("image",),
    "tabular": ("weight", "ink"),
    "image+tabular": ("image", "weight", "ink"),
}
ROLES = {"weight": "numeric", "ink": "categorical"}


def run(name: str, keep: tuple[str, ...], paths: dict, args) -> dict:
    roles = {c: ROLES.get(c, c) if c in keep else "ignore" for c in COLUMNS}
    with tempfile.TemporaryDirectory() as out:
        clf = MultimodalClassifier(
            preset=args.preset,
            fusion=args.fusion,
            epochs=args.epochs,
            seed=args.seed,
            device="cpu",
            workers=args.workers,
            verbose=False,
            out_dir=out,
        )
        start = time.perf_counter()
        train = pd.read_csv(paths["train"], dtype=str, keep_default_na=False).replace({"": None})
        if args.train_rows:
            train = train.head(args.train_rows)
        root = Path(paths["train"]).parent
        clf.fit(read_manifest(train, modalities=roles, root=root))
        took = time.perf_counter() - start
        test = read_manifest(paths["test"], modalities=roles)
        result = clf.evaluate(test, ablation=len(keep) > 1)
    row = {"inputs": name, "accuracy": result["accuracy"], "fit_s": round(took, 1)}
    if len(keep) > 1:
        row["ablation"] = clf.last_evaluation_["ablation"]
    print(f"done: {row['inputs']} {row['accuracy']:.3f} in {took:.0f} s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--epochs", type=int, help="default: the preset's default epochs")
    parser.add_argument("--preset", choices=("fast", "medium", "best"), help="default: medium")
    parser.add_argument("--fusion", default="attention")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--train-rows", type=int, help="train on the first N training rows")
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    paths = ensure_avdigits(args.samples, args.seed, progress=False, tabular=True)
    rows = [run(name, keep, paths, args) for name, keep in RUNS.items()]
    print(
        f"\navdigits-{args.samples} (seed {args.seed}), preset {args.preset or 'default'}, "
        f"fusion {args.fusion}, {args.epochs or 'default'} epochs; test split"
    )
    print(f"{'inputs':<16}{'accuracy':>10}{'fit s':>8}")
    for r in rows:
        print(f"{r['inputs']:<16}{r['accuracy']:>10.3f}{r['fit_s']:>8.1f}")
    fused = rows[-1].get("ablation", {})
    if fused:
        print("\nablation of the fused model (same weights, inputs removed through the mask):")
        for variant, accuracy in fused.items():
            print(f"  {variant:<18}{accuracy:.3f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
