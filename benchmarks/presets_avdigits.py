"""Does fusion beat every single modality with each preset? avdigits, one run, side by side.

For each preset, trains `MultimodalClassifier(preset=P)` on the same avdigits splits with one
column at a time (the others ignored) and with all four columns fused, and prints test accuracy
and fit time (feature caching included). The load average is printed at the start and the end:
run it alone.

    python benchmarks/presets_avdigits.py                      # 600 samples, fast and medium
    python benchmarks/presets_avdigits.py --presets fast medium best --samples 600 --epochs 10
    python benchmarks/presets_avdigits.py --presets medium --no-signal audio

`--no-signal COLUMN` shuffles that column's files across the rows of each split (a fixed
permutation), so it carries nothing about the label: it scores chance alone, and the fused
model shows whether a column without signal pulls it below the best single one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mmfuse import MultimodalClassifier
from mmfuse.data.avdigits import make_avdigits

COLUMNS = ("image", "audio", "video", "text")


def run(preset: str, paths: dict, keep: tuple[str, ...], epochs: int | None, seed: int) -> dict:
    ignore = {c: "ignore" for c in COLUMNS if c not in keep}
    with tempfile.TemporaryDirectory() as out:
        clf = MultimodalClassifier(
            preset=preset, epochs=epochs, seed=seed, device="cpu", verbose=False, out_dir=out
        )
        start = time.perf_counter()
        clf.fit(paths["train"], label="label", val=paths["val"], modalities=ignore)
        took = time.perf_counter() - start
        test = pd.read_csv(paths["test"])
        root = Path(paths["test"]).parent
        for column in keep:
            test[column] = [str(root / v) if column != "text" else v for v in test[column]]
        predicted = clf.predict(test[[*keep]])
    accuracy = float(np.mean(predicted.astype(str) == test["label"].astype(str).to_numpy()))
    return {"preset": preset, "inputs": "+".join(keep), "accuracy": accuracy, "fit_s": took}


def without_signal(paths: dict, column: str, seed: int) -> dict:
    """Copies of the split manifests with `column` permuted across rows, beside the originals."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, path in paths.items():
        frame = pd.read_csv(path)
        frame[column] = frame[column].to_numpy()[rng.permutation(len(frame))]
        out[split] = str(Path(path).with_name(f"{split}-no-{column}.csv"))
        frame.to_csv(out[split], index=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["fast", "medium"])
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--epochs", type=int, help="default: each preset's default epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", help="avdigits folder (default: a temporary one)")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument(
        "--no-signal", choices=COLUMNS, help="shuffle this column across rows (no signal left)"
    )
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    data = Path(args.data or tempfile.mkdtemp(prefix="avdigits-"))
    paths = make_avdigits(data, samples=args.samples, seed=args.seed, progress=False)
    if args.no_signal:
        paths = without_signal(paths, args.no_signal, args.seed)
        print(f"{args.no_signal} shuffled across rows: it carries no signal")
    runs = [(c,) for c in COLUMNS] + [COLUMNS]
    rows = []
    for preset in args.presets:
        for keep in runs:
            rows.append(run(preset, paths, keep, args.epochs, args.seed))
            r = rows[-1]
            print(
                f"{r['preset']:<7} {r['inputs']:<24} acc {r['accuracy']:.3f}  fit {r['fit_s']:.0f} s"
            )
    table = pd.DataFrame(rows).pivot(index="inputs", columns="preset", values="accuracy")
    print(f"\ntest accuracy, avdigits {args.samples} samples, {args.epochs or 'default'} epochs")
    print(table.loc[[*[c for c in COLUMNS], "+".join(COLUMNS)]].round(3).to_string())
    times = pd.DataFrame(rows).pivot(index="inputs", columns="preset", values="fit_s")
    print("\nfit time (s)")
    print(times.round(1).to_string())
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
