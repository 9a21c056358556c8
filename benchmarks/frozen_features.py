"""What the `medium` preset's frozen features cost to compute: in slices or one call a batch,
channels-last or not.

    .venv/bin/python benchmarks/frozen_features.py                      # avdigits-600
    .venv/bin/python benchmarks/frozen_features.py --tasks avdigits,digits --samples 200

For each task and setting, in a process of its own: `MultimodalClassifier(preset="medium")`
fitted twice on the same splits with one fresh feature cache. The first fit computes every
frozen feature (cold), the second finds them all in the cache (warm); the difference is what
computing the features cost. Settings:

- `one-call`: each batch through an encoder in one call, as before slicing (the slice budget
  `encoders.base.SLICE_BYTES` set beyond any batch);
- `slices-nchw`: in slices, each picture batch in the layout it comes in (NCHW), as before
  `encoders.base.CPU_CHANNELS_LAST`;
- `slices`: large batches in slices (`encoders.base.in_slices`), channels-last: the default.

Also printed: the child's peak memory and minor page faults, and test accuracy and log loss,
both of the fitted classifier and of its saved folder loaded again (`MultimodalClassifier.load`):
slicing must not change them. The tasks: `avdigits` (image, audio, video and text
columns; `--samples` rows) and the real-media tasks of `mmfuse.data.real`. The load average is
printed at start and end: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from real import load, scores

SETTINGS = ("one-call", "slices-nchw", "slices")


def task_paths(task: str, samples: int, data: Path) -> dict[str, Path]:
    if task == "avdigits":
        from mmfuse.data.avdigits import make_avdigits

        root = data / f"avdigits-{samples}"
        if not (root / "avdigits.json").is_file():
            make_avdigits(root, samples=samples, seed=0, progress=False)
        return {s: root / f"{s}.csv" for s in ("train", "val", "test")}
    from mmfuse.data.real import ensure_real_task

    return ensure_real_task(task, data / f"real-{task}", seed=0, size="small")


def measure(task: str, setting: str, args) -> dict:
    """One task and setting: a cold and a warm fit, and the test scores."""
    from mmfuse import MultimodalClassifier
    from mmfuse.encoders import base

    if setting == "one-call":
        base.SLICE_BYTES = 1 << 62
    if setting in ("one-call", "slices-nchw"):
        base.CPU_CHANNELS_LAST = False
    paths = task_paths(task, args.samples, Path(args.data))
    truth = pd.read_csv(paths["test"], dtype=str)["label"].to_numpy()
    with tempfile.TemporaryDirectory(prefix="mmfuse-frozen-") as tmp:
        times = []
        for run in ("cold", "warm"):
            clf = MultimodalClassifier(
                preset="medium",
                seed=0,
                verbose=False,
                out_dir=f"{tmp}/{run}",
                train_options={"cache_dir": f"{tmp}/cache"},
            )
            start = time.perf_counter()
            clf.fit(str(paths["train"]), val=str(paths["val"]))
            times.append(time.perf_counter() - start)
        classes = [str(c) for c in clf.classes_]
        fitted = scores(clf.predict_proba(str(paths["test"])), classes, truth)
        saved = MultimodalClassifier.load(clf.save(f"{tmp}/model"))
        loaded = scores(saved.predict_proba(str(paths["test"])), classes, truth)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rows = sum(len(pd.read_csv(paths[s])) for s in ("train", "val"))
    return {
        "task": task,
        "setting": setting,
        "rows": rows,
        "cold_s": times[0],
        "warm_s": times[1],
        "features_s": times[0] - times[1],
        "peak_mb": usage.ru_maxrss / 1024,
        "minor_faults": usage.ru_minflt,
        "fitted": fitted,
        "loaded": loaded,
    }


def run_in_child(script: str, *child: str) -> dict:
    """`script` run again with this run's arguments and `--child *child`: the dict it prints
    on its `RESULT ` line (each measurement in a fresh process: its own peak and faults)."""
    command = [sys.executable, script, *sys.argv[1:], "--child", *child]
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{' '.join(child)} failed:\n{done.stderr[-3000:]}")


def run_child(task: str, setting: str) -> dict:
    return run_in_child(__file__, task, setting)


def print_row(r: dict) -> None:
    per_row = 1000 * r["features_s"] / r["rows"]
    print(
        f"{r['task']:<12} {r['setting']:<9} {r['rows']:>5} {r['cold_s']:>7.1f} {r['warm_s']:>7.1f} "
        f"{r['features_s']:>8.1f} {per_row:>7.1f} {r['peak_mb']:>7.0f} {r['minor_faults']:>10,} "
        f"{r['fitted']['accuracy']:>6.3f} {r['fitted']['log_loss']:>6.3f} "
        f"{r['loaded']['accuracy']:>6.3f} {r['loaded']['log_loss']:>6.3f}",
        flush=True,
    )


def main() -> None:
    args = parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(*args.child, args)))
        return
    Path(args.data).mkdir(parents=True, exist_ok=True)
    print(f"load average at start (1, 5, 15 min): {load()}")
    print(
        f"{'task':<12} {'setting':<9} {'rows':>5} {'cold s':>7} {'warm s':>7} {'feats s':>8} "
        f"{'ms/row':>7} {'peak MB':>7} {'faults':>10} {'acc':>6} {'loss':>6} "
        f"{'acc*':>6} {'loss*':>6}"
    )
    results = []
    for task in args.tasks.split(","):
        first = None
        for setting in args.settings.split(","):
            result = run_child(task, setting)
            print_row(result)
            results.append(result)
            first = first or result
            if result is not first:
                ratio = first["features_s"] / max(result["features_s"], 1e-9)
                print(f"{'':<12} {setting} computes the features {ratio:.2f}x as fast as "
                      f"{first['setting']}")  # fmt: skip
    print("acc*, loss*: the saved folder loaded again")
    print(f"load average at end (1, 5, 15 min): {load()}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="avdigits", help="avdigits and/or real task names")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=", ".join(SETTINGS))
    parser.add_argument("--samples", type=int, default=600, help="avdigits rows (all splits)")
    parser.add_argument(
        "--data",
        default=os.path.join(tempfile.gettempdir(), "mmfuse-frozen-data"),
        help="where the tasks' media are written once",
    )
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.settings.split(",")) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; choose from {', '.join(SETTINGS)}")
    return args


if __name__ == "__main__":
    main()
