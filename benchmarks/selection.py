"""Ways of weighing the same ensemble members, compared on their saved probabilities.

    .venv/bin/python benchmarks/ensemble.py --data digits,scenes --preset medium --dump runs/
    .venv/bin/python benchmarks/selection.py runs/*.npz

Each file is `benchmarks/ensemble.py --dump`'s: every member's calibrated probabilities on the
validation and test splits, and the labels. For each, the members' test scores, then the
ensemble's with weights from plain greedy selection (Caruana et al. 2004), bagged selection
(`train.selection.bagged_weights`, what `train_ensemble` uses) and equal weights; each mix gets
its own temperature fitted on the validation split, as `train_ensemble` does. No training: the
weighing alone differs, so the rows compare like with like.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mmfuse.evaluate.calibration import expected_calibration_error, fit_temperature, untempered
from mmfuse.train.selection import bagged_weights, greedy_weights, score


def load(file: Path) -> tuple[dict, np.ndarray, dict, np.ndarray]:
    """`(val probas by member, val labels, test probas by member, test labels)`."""
    data = np.load(file)
    members = [k[len("val_") :] for k in data.files if k.startswith("val_") and k != "val_y"]
    val = {m: data[f"val_{m}"] for m in members}
    test = {m: data[f"test_{m}"] for m in members}
    return val, data["val_y"], test, data["test_y"]


def tempered_mix(weights: dict, val: dict, y_val, test: dict) -> np.ndarray:
    """The weighted test mix, divided by the temperature its validation mix is fitted to."""
    t = fit_temperature(y_val, sum(w * val[m] for m, w in weights.items()))
    return untempered(sum(w * test[m] for m, w in weights.items()), 1 / t)


def row(name: str, weights: str, y, proba) -> str:
    acc, loss = score("accuracy", y, proba), score("log_loss", y, proba)
    return f"| {name} | {weights} | {acc:.3f} | {loss:.3f} | {expected_calibration_error(y, proba):.3f} |"


def compare(file: Path) -> None:
    val, y_val, test, y_test = load(file)
    print(f"\n## {file.stem}: {len(y_val)} validation rows, {len(y_test)} test rows\n")
    print("| model | weights | accuracy | log loss | ECE |\n|---|---|---:|---:|---:|")
    for m, p in test.items():
        print(row(m, "", y_test, p))
    bagged = bagged_weights({m: {"t": p} for m, p in val.items()}, {"t": y_val})
    ways = {
        "plain selection": greedy_weights({m: {"t": p} for m, p in val.items()}, {"t": y_val}),
        f"bagged (shrink {bagged.shrink:.1f})": bagged.weights,
        "equal": dict.fromkeys(val, 1 / len(val)),
    }
    for name, weights in ways.items():
        shown = " ".join(f"{w:.2f}" for w in weights.values())
        print(row(f"**{name}**", shown, y_test, tempered_mix(weights, val, y_val, test)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    for file in parser.parse_args().files:
        compare(file)


if __name__ == "__main__":
    main()
