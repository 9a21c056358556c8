"""What a `medium` fit's checkpoints cost: every tensor in every checkpoint, or frozen ones once.

    .venv/bin/python benchmarks/checkpoints.py                     # avdigits-200, 2 repeats
    .venv/bin/python benchmarks/checkpoints.py --samples 600 --repeats 3

The trainer writes a checkpoint after every epoch. With the `medium` preset the model is mostly
frozen pretrained encoders, and on cached features an epoch of the head takes a fraction of
the time a checkpoint of the whole model does. Settings, each fit in a process of its own:

- `whole`: every checkpoint holds every tensor (`save_checkpoint(frozen_min_bytes=None)`), as
  before the frozen file;
- `frozen-once`: the default: frozen tensors go to one `frozen-<sha256>.safetensors` per run
  folder, written once, and each checkpoint holds the rest.

Each fit is `MultimodalClassifier(preset="medium")` on the same splits with the feature cache
already full (a first fit fills it, untimed), so the fit is what a user pays on every run after
the first. Printed per fit: wall seconds, seconds inside `save_checkpoint` and per checkpoint,
megabytes written per checkpoint, and the test accuracy / log loss of the fitted classifier
(the same for both: where the tensors lie does not change training). Settings alternate
(whole, frozen-once, whole, ...) so that a slow minute of the machine hits both. The load
average is printed at start and end: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from frozen_features import run_in_child, task_paths
from real import load, scores

SETTINGS = ("whole", "frozen-once")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def count_saves(setting: str) -> dict:
    """Wrap the trainer's `save_checkpoint`: time, count and bytes written of every save."""
    from mmfuse.train import checkpoint
    from mmfuse.train import state as train_state

    stats = {"seconds": 0.0, "saves": 0, "bytes": 0}
    save = checkpoint.save_checkpoint
    extra = {"frozen_min_bytes": None} if setting == "whole" else {}

    def timed(run_dir, *args, **kwargs):
        before = set(Path(run_dir).glob("frozen-*")) if Path(run_dir).is_dir() else set()
        start = time.perf_counter()
        path = save(run_dir, *args, **kwargs, **extra)
        stats["seconds"] += time.perf_counter() - start
        stats["saves"] += 1
        written = set(Path(run_dir).glob("frozen-*")) - before
        stats["bytes"] += folder_bytes(path) + sum(p.stat().st_size for p in written)
        return path

    train_state.save_checkpoint = timed
    return stats


def measure(setting: str, args) -> dict:
    from mmfuse import MultimodalClassifier

    paths = task_paths("avdigits", args.samples, Path(args.data))
    truth = pd.read_csv(paths["test"], dtype=str)["label"].to_numpy()
    stats = count_saves(setting) if setting in SETTINGS else None
    with tempfile.TemporaryDirectory(prefix="mmfuse-ckpt-") as tmp:
        clf = MultimodalClassifier(
            preset="medium",
            seed=0,
            verbose=False,
            out_dir=tmp,
            train_options={"cache_dir": str(Path(args.data) / "feature-cache")},
        )
        start = time.perf_counter()
        clf.fit(str(paths["train"]), val=str(paths["val"]))
        wall = time.perf_counter() - start
        result = scores(
            clf.predict_proba(str(paths["test"])), [str(c) for c in clf.classes_], truth
        )
    return {"setting": setting, "fit_s": wall, **(stats or {}), **result}


def run_child(setting: str) -> dict:
    return run_in_child(__file__, setting)


def print_row(r: dict) -> None:
    per_save = 1000 * r["seconds"] / max(r["saves"], 1)
    mb = r["bytes"] / max(r["saves"], 1) / 1e6
    print(
        f"{r['setting']:<12} {r['fit_s']:>7.1f} {r['seconds']:>7.1f} {r['saves']:>6} "
        f"{per_save:>8.0f} {mb:>8.1f} {r['accuracy']:>6.3f} {r['log_loss']:>7.4f}",
        flush=True,
    )


def main() -> None:
    args = parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args)))
        return
    Path(args.data).mkdir(parents=True, exist_ok=True)
    print(f"load average at start (1, 5, 15 min): {load()}")
    run_child("fill")  # computes every frozen feature once; not timed
    print(f"{'setting':<12} {'fit s':>7} {'ckpt s':>7} {'saves':>6} {'ms/save':>8} "
          f"{'MB/save':>8} {'acc':>6} {'loss':>7}")  # fmt: skip
    results = {s: [] for s in SETTINGS}
    for _ in range(args.repeats):
        for setting in SETTINGS:
            result = run_child(setting)
            print_row(result)
            results[setting].append(result)
    whole, once = (statistics.median(r["fit_s"] for r in results[s]) for s in SETTINGS)
    saves = [statistics.median(r["seconds"] / r["saves"] for r in results[s]) for s in SETTINGS]
    print(f"median fit: whole {whole:.1f} s, frozen-once {once:.1f} s ({whole / once:.2f}x); "
          f"a checkpoint {saves[0] / saves[1]:.1f}x as fast")  # fmt: skip
    print(f"load average at end (1, 5, 15 min): {load()}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="avdigits rows (all splits)")
    parser.add_argument("--repeats", type=int, default=2, help="fits per setting, alternating")
    parser.add_argument(
        "--data",
        default=os.path.join(tempfile.gettempdir(), "mmfuse-frozen-data"),
        help="where the media and the feature cache are written once",
    )
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
