"""Ways of weighing the same ensemble members, compared on their saved probabilities.

    .venv/bin/python benchmarks/ensemble.py --data digits,scenes --preset medium --dump runs/
    .venv/bin/python benchmarks/selection.py runs/*.npz
    .venv/bin/python benchmarks/selection.py --summary runs/draw*/*.npz   # over draws

Each file is `benchmarks/ensemble.py --dump`'s: every member's calibrated probabilities on the
validation and test splits, and the labels. For each, the members' test scores, then the
ensemble's with weights from plain greedy selection (Caruana et al. 2004), bagged selection
(`train.selection.bagged_weights`, what `weights=selected` uses) and equal weights, each mix
with its own temperature fitted on the validation split, as `weights=selected` does; then equal
weights at T = 1 and what `weights=auto`, the default, chooses. No
training: the weighing alone differs, so the rows compare like with like.

`--summary`: the files grouped by name (one per draw of a task: `runs/draw<S>/<task>.npz`), and
per task the mean over draws of each way's test accuracy and log loss, and its difference from
three members, with the draws won / tied / lost:

- the best member on the test split, chosen after the fact (the best accuracy and the lowest
  log loss of any member in that draw): the strictest reading, and a biased one. Which of a few
  similar members does best on 30 rows is partly luck, and the maximum keeps the luck;
- the member with the lowest validation log loss: the one a user keeps without an ensemble;
- the best member chosen on the *other* draws' test splits (the fusion method with the best
  mean accuracy, and separately the lowest mean log loss, over every draw but this one; in this
  draw the mean of that method's members, i.e. one run's expected score): the member that is
  best on this task's kind of test rows, chosen without this draw's luck (leave one draw out).
  It needs two draws or more.

The ways: bagged selection as `weights=selected` weighs (its temperature fitted on
validation), the same weights with the ensemble's own temperature at 1, equal weights both ways
(`weights=equal` keeps T = 1), and `weights=auto`, the default, which is one of the first and
the last: selected on 200 labelled validation rows or more where the selection beats equal
weights there by 4 standard errors, else equal at T = 1 (`auto_way`).
`--members GLOB` keeps the members whose names match (e.g. `'*-seed0'`: one seed of each
fusion method out of a `--seeds 2` run).
"""

from __future__ import annotations

import argparse
import fnmatch
from collections import defaultdict
from pathlib import Path

import numpy as np

from mmfuse.evaluate.calibration import expected_calibration_error, fit_temperature, untempered
from mmfuse.train.selection import (
    MIN_GAIN_SE,
    MIN_ROWS_TO_SELECT,
    bagged_weights,
    gain_in_se,
    greedy_weights,
    score,
)


def load(file: Path, keep: str = "*") -> tuple[dict, np.ndarray, dict, np.ndarray]:
    """`(val probas by member, val labels, test probas by member, test labels)`, the members
    whose names match the glob `keep`."""
    data = np.load(file)
    members = [k[len("val_") :] for k in data.files if k.startswith("val_") and k != "val_y"]
    members = [m for m in members if fnmatch.fnmatchcase(m, keep)]
    if not members:
        raise SystemExit(f"{file}: no member matches {keep!r}")
    val = {m: data[f"val_{m}"] for m in members}
    test = {m: data[f"test_{m}"] for m in members}
    return val, data["val_y"], test, data["test_y"]


def mix(weights: dict, probas: dict) -> np.ndarray:
    """The members' probabilities averaged with `weights`."""
    return sum(w * probas[m] for m, w in weights.items())


def tempered_mix(weights: dict, val: dict, y_val, test: dict) -> np.ndarray:
    """The weighted test mix, divided by the temperature its validation mix is fitted to."""
    return untempered(mix(weights, test), 1 / fit_temperature(y_val, mix(weights, val)))


def auto_way(val: dict, y_val, test: dict) -> tuple[np.ndarray, str]:
    """The test mix `weights=auto` (the default) makes, and why: the bagged weights with their
    temperature on `MIN_ROWS_TO_SELECT` validation rows or more where they beat equal weights
    there by `MIN_GAIN_SE` standard errors (`train.ensemble.choose_weights`), else equal
    weights at T = 1."""
    probas, labels = {m: {"t": p} for m, p in val.items()}, {"t": y_val}
    equal = dict.fromkeys(val, 1 / len(val))
    if len(y_val) < MIN_ROWS_TO_SELECT:
        return mix(equal, test), f"equal: fewer than {MIN_ROWS_TO_SELECT} rows"
    bagged = bagged_weights(probas, labels).weights
    gain = gain_in_se(probas, labels, bagged)
    if gain < MIN_GAIN_SE:
        return mix(equal, test), f"equal: selection {gain:.1f} SE better"
    return tempered_mix(bagged, val, y_val, test), f"selected: {gain:.1f} SE better"


def row(name: str, weights: str, y, proba) -> str:
    acc, loss = score("accuracy", y, proba), score("log_loss", y, proba)
    return f"| {name} | {weights} | {acc:.3f} | {loss:.3f} | {expected_calibration_error(y, proba):.3f} |"


def compare(file: Path, keep: str = "*") -> None:
    val, y_val, test, y_test = load(file, keep)
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
    print(row("**equal, T = 1**", "", y_test, mix(ways["equal"], test)))
    proba, why = auto_way(val, y_val, test)
    print(row(f"**auto, the default** ({why})", "", y_test, proba))


def ways_of(file: Path, keep: str = "*") -> tuple[dict, dict]:
    """Test (accuracy, log loss) of each way of mixing the file's members and of the two
    single members the ensemble is compared with in one draw; and of every member."""
    val, y_val, test, y_test = load(file, keep)
    scored = lambda p: (score("accuracy", y_test, p), score("log_loss", y_test, p))  # noqa: E731
    members = {m: scored(p) for m, p in test.items()}
    # Ranked by validation log loss, the ensemble's default monitor (as ensemble.py prints it).
    first = min(val, key=lambda m: score("log_loss", y_val, val[m]))
    bagged = bagged_weights({m: {"t": p} for m, p in val.items()}, {"t": y_val}).weights
    equal = dict.fromkeys(val, 1 / len(val))
    return {
        # The strict reading: the best accuracy and the lowest log loss of any member.
        "best member on test": (
            max(a for a, _ in members.values()),
            min(lo for _, lo in members.values()),
        ),
        "member validation ranks first": members[first],
        "bagged, T on validation": scored(tempered_mix(bagged, val, y_val, test)),
        "bagged, T = 1": scored(mix(bagged, test)),
        "equal, T on validation": scored(tempered_mix(equal, val, y_val, test)),
        "equal, T = 1": scored(mix(equal, test)),
        "auto (the default)": scored(auto_way(val, y_val, test)[0]),
    }, members


REFS = ("best member on test", "member validation ranks first", "best member on other draws")


def summary(files: list[Path], keep: str = "*") -> None:
    by_task = defaultdict(list)
    for file in files:
        by_task[file.stem].append(ways_of(file, keep))
    for task, scored in by_task.items():
        draws = [ways for ways, _ in scored]
        refs = REFS if len(draws) > 1 else REFS[:2]
        if len(draws) > 1:
            add_other_draws_pick(draws, [members for _, members in scored])
        print(f"\n## {task}: {len(draws)} draws, test split; mean, and difference per draw\n")
        head = " | ".join(f"− {r}: accuracy, log loss (W/T/L)" for r in refs)
        print(f"| way | accuracy | log loss | {head} |")
        print("|---|---:|---:|" + "---|" * len(refs))
        for way in draws[0]:
            acc, loss = (np.mean([d[way][i] for d in draws]) for i in (0, 1))
            cells = " | ".join(_diff(draws, way, ref) for ref in refs)
            print(f"| {way} | {acc:.3f} | {loss:.3f} | {cells} |")
        # Equal weights against selection, the two ways the default can go.
        both = _diff(draws, "equal, T = 1", "bagged, T on validation")
        print(f"\nequal, T = 1 − bagged, T on validation: accuracy, log loss (W/T/L): {both}")


def add_other_draws_pick(draws: list[dict], members: list[dict]) -> None:
    """Into each draw, "best member on other draws": the test accuracy of the fusion method
    with the best mean accuracy over the other draws, and the log loss of the one with the
    lowest mean log loss there (leave one draw out: no draw's luck picks its own member).

    Picked by method, not by member name, and scored as the mean of that method's members in
    this draw (one run's expected score): the draws share rows, so `attention-seed1`, the same
    initial weights on nearly the same rows, would carry one seed's luck from draw to draw."""
    methods = {}
    for name in members[0]:
        methods.setdefault(name.split("-seed")[0], []).append(name)
    per_draw = [
        {k: np.mean([m[n] for n in names], axis=0) for k, names in methods.items()} for m in members
    ]
    for d, ways in enumerate(draws):
        means = {
            k: np.mean([p[k] for i, p in enumerate(per_draw) if i != d], axis=0) for k in methods
        }
        by_acc = max(methods, key=lambda k: means[k][0])
        by_loss = min(methods, key=lambda k: means[k][1])
        ways["best member on other draws"] = (per_draw[d][by_acc][0], per_draw[d][by_loss][1])


def _diff(draws: list[dict], way: str, ref: str) -> str:
    """Mean accuracy and log-loss difference from `ref` (standard error), and the draws whose
    accuracy is higher / equal / lower."""
    acc = np.array([d[way][0] - d[ref][0] for d in draws])
    loss = np.array([d[way][1] - d[ref][1] for d in draws])
    se = lambda x: x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")  # noqa: E731
    wtl = f"{(acc > 1e-9).sum()}/{(abs(acc) <= 1e-9).sum()}/{(acc < -1e-9).sum()}"
    return f"{acc.mean():+.3f} ({se(acc):.3f}), {loss.mean():+.3f} ({se(loss):.3f}) ({wtl})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--summary", action="store_true", help="means over draws, per task")
    parser.add_argument("--members", default="*", help="glob: the members to weigh")
    args = parser.parse_args()
    if args.summary:
        summary(args.files, args.members)
        return
    for file in args.files:
        compare(file, args.members)


if __name__ == "__main__":
    main()
