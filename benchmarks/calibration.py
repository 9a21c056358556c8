"""Calibration of the model a user gets: test ECE before and after temperature scaling.

    .venv/bin/python benchmarks/calibration.py                       # default preset (medium)
    .venv/bin/python benchmarks/calibration.py --preset fast         # the fast preset
    .venv/bin/python benchmarks/calibration.py --fusion late --epochs 10

Trains `MultimodalClassifier(preset=--preset, fusion=--fusion, epochs=--epochs)` with every
other argument at its default on avdigits (`ensure_avdigits(--samples)`: train / val / test),
so the validation split picks the best epoch and fits the temperature as it does for a user;
then scores the test split: accuracy, log loss, the fitted T, and ECE (15 bins) after and
before T.

Then, from the validation and test probabilities at T = 1, a diagnosis of the fit (none of
it changes the model): the T that a grid search over [0.05, 20] finds for the validation NLL
(to check the LBFGS fit), the test ECE at the T that minimises the *test* NLL and the least
test ECE any T reaches (oracles: they show what temperature scaling could do at best, they
are not a way to calibrate), and the ECE that a perfectly calibrated model with the same
test confidences would show on this many rows (labels drawn from its own probabilities, 300
draws: the sampling noise of a 15-bin ECE). `--dump FILE.npz` also saves those probabilities
(`val_proba`, `val_y`, `test_proba`, `test_y`). The load average is printed at the start and
the end: run it alone.
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
from mmfuse.evaluate.calibration import expected_calibration_error, untempered
from mmfuse.train.selection import score

GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 2001))


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


def tempered(proba: np.ndarray, t: float) -> np.ndarray:
    return untempered(proba, 1 / t)


def diagnose(val: tuple, test: tuple, fitted: float) -> None:
    """Print how the fitted T compares with a grid search and with the test split's oracles,
    and the ECE noise of a perfectly calibrated model with the test confidences."""
    (vp, vy), (tp, ty) = val, test
    val_nll = [score("log_loss", vy, tempered(vp, t)) for t in GRID]
    test_nll = [score("log_loss", ty, tempered(tp, t)) for t in GRID]
    test_ece = [expected_calibration_error(ty, tempered(tp, t)) for t in GRID]
    oracle = GRID[int(np.argmin(test_nll))]
    print(
        f"T by LBFGS {fitted:.4f}, by grid search on the validation NLL "
        f"{GRID[int(np.argmin(val_nll))]:.4f}\n"
        f"oracle: the test NLL's best T {oracle:.3f} gives test ECE "
        f"{expected_calibration_error(ty, tempered(tp, oracle)):.4f}; the least test ECE of "
        f"any T is {min(test_ece):.4f} (T {GRID[int(np.argmin(test_ece))]:.3f})"
    )
    rng = np.random.default_rng(0)
    p = tempered(tp, fitted)
    cumulative = p.cumsum(axis=1)
    noise = [
        expected_calibration_error((rng.random((len(p), 1)) > cumulative).sum(axis=1), p)
        for _ in range(300)
    ]
    print(
        f"ECE of a perfectly calibrated model with these test confidences on {len(ty)} rows: "
        f"mean {np.mean(noise):.4f}, 90th percentile {np.percentile(noise, 90):.4f}"
    )


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
    val_proba, val_y = untempered_split(clf, paths["val"])
    test_proba, test_y = untempered_split(clf, paths["test"])
    diagnose((val_proba, val_y), (test_proba, test_y), m["temperature"])
    if args.dump:
        np.savez(args.dump, val_proba=val_proba, val_y=val_y, test_proba=test_proba, test_y=test_y)
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
