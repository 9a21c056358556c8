"""Real media: each mmfuse preset against the 20-line scikit-learn baseline, per task, in one run.

    .venv/bin/python benchmarks/real.py                          # every task, small, 3 presets
    .venv/bin/python benchmarks/real.py --tasks faces,digits --size large --presets medium
    .venv/bin/python benchmarks/real.py --presets none --out baseline.json   # baselines only

The tasks are `mmfuse.data.real.REAL_TASKS` (real voices, photographs, scans and footage that
`make setup` installs), written once into mmfuse's cache folder (or `--data`). Per task:

- baseline: scikit-learn `StandardScaler` + `LogisticRegression` on fixed features of the
  training split: audio, librosa MFCC (20) mean and standard deviation over time at the file's
  own rate; image, the grey pixels resized to 16×16; video, the mean of 8 frames resized to
  16×16 RGB. The validation split is not used.
- mmfuse: `MultimodalClassifier(preset=P, epochs=--epochs).fit(train, val=val)` for each
  preset P (the validation split picks the best epoch).

`--encoders` (JSON) overrides the presets' encoders per modality, as
`MultimodalClassifier(encoders=...)` does: the same run with one encoder setting changed.

`--epochs` defaults to each preset's own default (`mmfuse.train.presets.default_epochs`: with
every encoder frozen, as with `medium`, enough for 500 optimiser steps, 40 to 200 epochs; else
10).

Accuracy and log loss (the mean negative log-probability of the true class: how much the
probabilities can be trusted) are on the test split; "train s" is the wall time of fitting
(feature extraction and, for mmfuse, feature caching included). The load average is printed
at start and end: on a shared machine a high one inflates the times, not the accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmfuse.data.real import REAL_TASKS, SIZES, ensure_real_task
from mmfuse.data.video import read_video

PRESETS = ("fast", "medium", "best")
PIXELS = 16  # baseline images and frames are resized to PIXELS×PIXELS
FRAMES = 8  # frames averaged per clip by the video baseline


# ------------------------------------------------------------------------------- baseline
def audio_features(path: Path) -> np.ndarray:
    y, rate = librosa.load(path, sr=None)
    mfcc = librosa.feature.mfcc(y=y, sr=rate, n_mfcc=20)
    return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)])


def image_features(path: Path) -> np.ndarray:
    image = Image.open(path).convert("L").resize((PIXELS, PIXELS), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32).ravel() / 255


def video_features(path: Path) -> np.ndarray:
    clip = read_video(path, FRAMES, size=(PIXELS, PIXELS))
    return clip.frames.float().mean(dim=0).numpy().ravel() / 255  # C×H×W mean frame


FEATURES = {"audio": audio_features, "image": image_features, "video": video_features}


def split_data(path: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(path, dtype=str)
    features = FEATURES[column]
    x = np.stack([features(path.parent / file) for file in frame[column]])
    return x, frame["label"].to_numpy()


def baseline(paths: dict[str, Path], column: str) -> dict:
    start = time.perf_counter()
    x, y = split_data(paths["train"], column)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x, y)
    train_s = time.perf_counter() - start
    x_test, y_test = split_data(paths["test"], column)
    proba = model.predict_proba(x_test)
    return scores(proba, list(model.classes_), y_test) | {"train_s": train_s}


def scores(proba: np.ndarray, classes: list[str], truth: np.ndarray) -> dict:
    """Accuracy and log loss of N×C probabilities (columns in `classes` order)."""
    predicted = np.asarray(classes)[proba.argmax(1)]
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "log_loss": float(log_loss(truth, proba, labels=classes)),
    }


# ------------------------------------------------------------------------------- mmfuse
def mmfuse_run(
    paths: dict[str, Path], preset: str, epochs: int | None, seed: int, encoders: dict | None
) -> dict:
    from mmfuse import MultimodalClassifier

    with tempfile.TemporaryDirectory(prefix="mmfuse-real-") as run_dir:
        clf = MultimodalClassifier(
            preset=preset,
            encoders=encoders,
            epochs=epochs,
            seed=seed,
            verbose=False,
            out_dir=run_dir,
        )
        start = time.perf_counter()
        clf.fit(str(paths["train"]), val=str(paths["val"]))
        train_s = time.perf_counter() - start
        proba = clf.predict_proba(str(paths["test"]))
        classes = [str(c) for c in clf.classes_]
    truth = pd.read_csv(paths["test"], dtype=str)["label"].to_numpy()
    return scores(proba, classes, truth) | {"train_s": train_s}


def guarded(run, *args) -> dict:
    """A method that fails (a preset not there yet, weights not installed) is a row with its
    error, so the other rows of the one run still come out."""
    try:
        return run(*args)
    except Exception as error:
        failed = {"accuracy": None, "log_loss": None, "train_s": None}
        return failed | {"error": f"{type(error).__name__}: {error}"}


# ------------------------------------------------------------------------------- table
def describe(name: str, paths: dict[str, Path]) -> dict:
    frames = {split: pd.read_csv(path, dtype=str) for split, path in paths.items()}
    task = REAL_TASKS[name]
    return {
        "task": name,
        "modality": task.modality,
        "classes": frames["train"]["label"].nunique(),
        "sizes": {split: len(frame) for split, frame in frames.items()},
    }


def print_row(info: dict, method: str, result: dict) -> None:
    sizes = info["sizes"]
    acc = "-" if result["accuracy"] is None else f"{result['accuracy']:.3f}"
    loss = "-" if result["log_loss"] is None else f"{result['log_loss']:.3f}"
    secs = "-" if result["train_s"] is None else f"{result['train_s']:.1f}"
    line = (
        f"{info['task']:<16} {info['modality']:<6} {info['classes']:>3} "
        f"{sizes['train']:>5}/{sizes['test']:<5} {method:<16} {acc:>6} {loss:>8} {secs:>8}"
    )
    if "error" in result:
        line += f"  {result['error'][:120]}"
    print(line, flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    args = parse_args()
    began = time.perf_counter()
    report = {"size": args.size, "epochs": args.epochs, "seed": args.seed, "load_start": load()}
    report["encoders"] = args.encoders
    print(f"load average at start (1, 5, 15 min): {report['load_start']}")
    print(f"{'task':<16} {'input':<6} {'cls':>3} {'train/test':<11} {'method':<16} "
          f"{'acc':>6} {'log loss':>8} {'train s':>8}")  # fmt: skip
    rows = []
    for name in args.tasks:
        root = None if args.data is None else Path(args.data) / f"{name}-{args.size}-{args.seed}"
        paths = ensure_real_task(name, root, seed=args.seed, size=args.size)
        info = describe(name, paths)
        methods = [("sklearn-logreg", baseline, (paths, info["modality"]))]
        methods += [
            (f"mmfuse {p}", mmfuse_run, (paths, p, args.epochs, args.seed, args.encoders))
            for p in args.presets
        ]
        for method, run, run_args in methods:
            result = guarded(run, *run_args)
            print_row(info, method, result)
            rows.append({**info, "method": method, **result})
    report["load_end"] = load()
    report["wall_s"] = round(time.perf_counter() - began, 1)
    report["results"] = rows
    print(f"load average at end (1, 5, 15 min): {report['load_end']}; {report['wall_s']} s in all")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(REAL_TASKS), help="comma-separated task names")
    parser.add_argument("--size", default="small", choices=SIZES)
    parser.add_argument(
        "--presets", default=",".join(PRESETS), help="comma-separated presets, or 'none'"
    )
    parser.add_argument(
        "--epochs", type=int, help="epochs per mmfuse fit (default: the preset's default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--encoders",
        type=json.loads,
        help="JSON for MultimodalClassifier(encoders=...), overriding the preset per modality, "
        'e.g. \'{"image": {"encoder": "efficientnet-lite0", "options": {"features": "stages"}, '
        '"mode": "freeze"}}\'',
    )
    parser.add_argument("--data", help="folder to write the tasks in (default: mmfuse's cache)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    args.tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in args.tasks if t not in REAL_TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(REAL_TASKS)}")
    args.presets = [] if args.presets == "none" else [p for p in args.presets.split(",") if p]
    bad = [p for p in args.presets if p not in PRESETS]
    if bad:
        parser.error(f"unknown preset(s) {bad}; choose from {', '.join(PRESETS)} or 'none'")
    return args


if __name__ == "__main__":
    main()
