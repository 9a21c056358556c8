"""Calibration of the model a user gets: test ECE before and after temperature scaling.

    .venv/bin/python benchmarks/calibration.py                       # default preset (medium)
    .venv/bin/python benchmarks/calibration.py --preset fast         # the fast preset
    .venv/bin/python benchmarks/calibration.py --fusion late --epochs 10

Trains `MultimodalClassifier(preset=--preset, fusion=--fusion, epochs=--epochs)` with every
other argument at its default on avdigits (`ensure_avdigits(--samples)`: train / val / test),
so the validation split picks the best epoch and fits the temperature as it does for a user;
then scores the test split: accuracy, log loss, the fitted T, and ECE (15 bins) after and
before T. `--dump FILE.npz` also saves the validation and test probabilities at T = 1 with
their labels (`val_proba`, `val_y`, `test_proba`, `test_y`), to study the fit offline. The
load average is printed at the start and the end: run it alone.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd

from mmfuse.classifier import MultimodalClassifier
from mmfuse.data.avdigits import ensure_avdigits


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def untempered_split(clf: MultimodalClassifier, path) -> tuple[np.ndarray, np.ndarray]:
    """`(proba at T = 1, label indices)` of a split; the model's T is restored after."""
    saved = clf.model_.temperatures()
    clf.model_.set_temperatures(dict.fromkeys(saved, 1.0))
    try:
        proba = clf.predict_proba(path)
    finally:
        clf.model_.set_temperatures(saved)
    classes = [str(c) for c in clf.labels_[clf.task_]]
    labels = pd.read_csv(path)[clf.task_].astype(str)
    return proba, np.array([classes.index(v) for v in labels])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--preset", default=None, help="default: the library's default")
    parser.add_argument("--fusion", default="attention")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dump", help="save validation and test probabilities at T = 1 here")
    args = parser.parse_args()
    print(f"load average at start: {loadavg()}")
    paths = ensure_avdigits(samples=args.samples, seed=0, progress=False)
    clf = MultimodalClassifier(
        preset=args.preset,
        fusion=args.fusion,
        epochs=args.epochs,
        seed=args.seed,
        device="cpu",
        verbose=False,
        out_dir=tempfile.mkdtemp(prefix="mmfuse-calibration-"),
    )
    started = time.perf_counter()
    clf.fit(paths["train"], val=paths["val"])
    took = time.perf_counter() - started
    m = clf.evaluate(paths["test"], ablation=False)
    print(
        f"avdigits {args.samples}, preset {args.preset or 'default'}, fusion {args.fusion}, "
        f"epochs {clf.train_config_.epochs}, seed {args.seed}: training {took:.0f} s\n"
        f"test accuracy {m['accuracy']:.4f}  log loss {m['log_loss']:.4f}  "
        f"T {m['temperature']:.3f}  ECE {m['ece']:.4f}  ECE before T {m['ece_uncalibrated']:.4f}"
    )
    if args.dump:
        val_proba, val_y = untempered_split(clf, paths["val"])
        test_proba, test_y = untempered_split(clf, paths["test"])
        np.savez(args.dump, val_proba=val_proba, val_y=val_y, test_proba=test_proba, test_y=test_y)
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
