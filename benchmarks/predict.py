"""Batch prediction throughput: a `Predictor.predict_one` loop vs `predict_manifest` with 0 and 2
DataLoader workers, on the same saved model and manifest, in one run.

    .venv/bin/python benchmarks/predict.py [--samples 600] [--repeats 3] [--video]
    .venv/bin/python benchmarks/predict.py --quick        # smoke test, under a minute

A small image+audio+text model (cnn width 32 @ 64 px, mel-cnn width 32 on 1 s of audio,
embedding bag; with `--video` also a per-frame cnn over 8 frames) is trained for one epoch with
`MultimodalClassifier` (accuracy is irrelevant here) and saved; every method then predicts every
row of the generated manifest with that saved model:

- naive: read the manifest, then `Predictor.predict_one(row)` for each row in turn: read,
  preprocess and forward one sample at a time (predictions kept in a list, nothing written);
- workers=0 / workers=2: `predict_manifest(..., batch_size=64)`, which decodes in DataLoader
  workers (or in the process with 0), forwards batches of 64 and writes a Parquet file.

Timed: the whole call, from the manifest file to the last prediction (and, for
`predict_manifest`, the Parquet file written). After an untimed warm-up on 64 rows, one untimed
round per method checks that all three predict the same labels and measures memory (its sampling
thread would slow a timed round): the peak growth over the call of this process's resident
memory (VmHWM, reset first) and of the anonymous memory of this process plus its workers
(`Pss_Anon`, sampled every 20 ms; proportional shares, so pages shared after fork count once and
pages of libraries shared with other programs not at all). Then the methods take turns for
`--repeats` timed rounds (naive, workers=0, workers=2, naive, ...); the figures are the median
rows/s and the median of each round's ratios. Data are generated into a temporary folder with
`make_shapes`.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmfuse.classifier import MultimodalClassifier
from mmfuse.data.manifest import read_manifest
from mmfuse.data.synthetic import make_shapes
from mmfuse.infer.predictor import Predictor
from mmfuse.infer.streamed import predict_manifest

CLASSES = 4
BATCH = 64
METHODS = ("naive", "workers=0", "workers=2")


# ---------------------------------------------------------------------------------- set-up
def encoders(quick: bool) -> dict:
    """InputConfig fields per modality: realistic small encoders, or tiny ones with --quick."""
    width, size = (8, 32) if quick else (32, 64)
    image = {"width": width, "image_size": size}
    return {
        "image": {"encoder": "cnn", "options": dict(image)},
        "audio": {"encoder": "mel-cnn", "options": {"width": width, "duration": 1.0}},
        "text": {"encoder": "embedding-bag", "options": {"dim": 64}},
        "video": {"encoder": "frames", "options": {"image": "cnn", "image_options": image}},
    }


def make_model(data: Path, out: Path, quick: bool) -> Path:
    """One epoch of training on the generated data, saved as a model folder."""
    clf = MultimodalClassifier(
        fusion="attention",
        encoders=encoders(quick),
        epochs=1,
        batch_size=32,
        device="cpu",
        seed=0,
        out_dir=out / "run",
        verbose=False,
    )
    clf.fit(data / "manifest.csv", label="label")
    return clf.save(out / "model")


# ---------------------------------------------------------------------------------- methods
def run_naive(predictor: Predictor, manifest_csv: Path, limit: int | None = None) -> list[str]:
    """The manifest read once, then one `predict_one` (read, preprocess, forward) per row."""
    roles = {spec.column: spec.modality for spec in predictor.config.inputs.values()}
    manifest = read_manifest(manifest_csv, modalities=roles)
    columns = {name: spec.column for name, spec in predictor.config.inputs.items()}
    labels = []
    for row in range(len(manifest) if limit is None else min(limit, len(manifest))):
        sample = {name: manifest.value(row, column) for name, column in columns.items()}
        labels.append(predictor.predict_one(sample).label)
    return labels


def run_batch(predictor, manifest_csv: Path, out: Path, workers: int, shard=(0, 1)) -> Path:
    """`predict_manifest` into a Parquet file, no progress bar or log line."""
    predict_manifest(
        predictor,
        manifest_csv,
        out,
        shard=shard,
        batch_size=BATCH,
        workers=workers,
        progress=False,
        log=lambda line: None,
    )
    return out


def call(method: str, predictor, manifest_csv: Path, tmp: Path):
    """Run one method over the whole manifest; naive returns labels, the others a Parquet path."""
    if method == "naive":
        return run_naive(predictor, manifest_csv)
    workers = int(method.split("=")[1])
    return run_batch(predictor, manifest_csv, tmp / f"out-w{workers}.parquet", workers)


def warm_up(predictor, manifest_csv: Path, rows: int, tmp: Path) -> None:
    """A few rows through each method, so first-call costs (allocators, lazy init) hit none."""
    run_naive(predictor, manifest_csv, limit=BATCH)
    for workers in (0, 2):
        shard = (0, max(1, rows // BATCH))  # the first ~64 rows
        run_batch(predictor, manifest_csv, tmp / "warm-up.parquet", workers, shard)


# ---------------------------------------------------------------------------------- memory
def _anon_kib(pid: int) -> int:
    """Proportional anonymous memory of process `pid`, in KiB (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    pids = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:  # exited
        return pids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def _tree_anon_kib() -> int:
    """Anonymous memory of this process and its descendants (DataLoader workers), in KiB."""
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += _anon_kib(pid)
        todo += _children(pid)
    return total


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_supported() -> bool:
    try:
        _status_kib("VmHWM")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _anon_kib(os.getpid()) > 0
    except (OSError, KeyError):  # not Linux, or a /proc without these files
        return False


def measure_memory(fn) -> tuple[object, float, float]:
    """fn's result, and in MiB the peak growth of this process's RSS and of the anonymous
    memory of it plus its workers over the call."""
    # Workers of an earlier call still exiting would count in the baseline.
    deadline = time.monotonic() + 5
    while any(_anon_kib(p) for p in _children(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.05)
    gc.collect()
    rss_before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
    base = peak = _tree_anon_kib()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.02):
            peak = max(peak, _tree_anon_kib())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        stop.set()
        thread.join()
    peak = max(peak, _tree_anon_kib())
    return result, (_status_kib("VmHWM") - rss_before) / 1024, (peak - base) / 1024


# ---------------------------------------------------------------------------------- check
def check_round(predictor, manifest_csv: Path, tmp: Path) -> tuple[dict, str]:
    """One untimed call per method: memory per method, and whether the labels agree
    (batched forwards may differ from single ones in the last bits, never in the label)."""
    measure = memory_supported()
    memory, labels = {}, {}
    for method in METHODS:
        fn = functools.partial(call, method, predictor, manifest_csv, tmp)
        if measure:
            out, rss, anon = measure_memory(fn)
            memory[method] = (rss, anon)
        else:
            out = fn()
        if method == "naive":
            labels[method] = np.asarray(out, dtype=object)
        else:
            frame = pd.read_parquet(out).sort_values("row")
            labels[method] = frame["prediction"].to_numpy(dtype=object)
    same = [f"{m}: {np.mean(labels[m] == labels['naive']):.1%}" for m in METHODS[1:]]
    return memory, "labels equal to naive's: " + ", ".join(same)


# ---------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=600, help="generated samples")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per method")
    parser.add_argument("--video", action="store_true", help="add a video column (8 frames)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in the main process (workers use 1 each); more than one on a CPU "
        "shared with other jobs makes every small op wait for a busy core",
    )
    parser.add_argument("--quick", action="store_true", help="tiny model and data (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.repeats = 96, 1
    torch.set_num_threads(args.threads)
    modalities = ("image", "audio", "text") + (("video",) if args.video else ())

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{args.samples} samples ({'+'.join(modalities)}), batch {BATCH}"
        + (", --quick" if args.quick else "")
        + f"; load average before: {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        make_shapes(
            data,
            max(2, args.samples // CLASSES),
            CLASSES,
            modalities=modalities,
            image_size=32 if args.quick else 64,
            audio_seconds=1.0,
        )
        manifest_csv = data / "manifest.csv"
        rows = len(pd.read_csv(manifest_csv))
        predictor = Predictor(make_model(data, tmp, args.quick))
        params = sum(p.numel() for p in predictor.model.parameters())
        warm_up(predictor, manifest_csv, rows, tmp)
        memory, agreement = check_round(predictor, manifest_csv, tmp)

        rates: dict[str, list[float]] = {m: [] for m in METHODS}
        for _ in range(args.repeats):
            # Methods take turns, so a burst of load from elsewhere hits all alike.
            for method in METHODS:
                start = time.perf_counter()
                call(method, predictor, manifest_csv, tmp)
                rates[method].append(rows / (time.perf_counter() - start))

    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min, this run's own load included)")
    inputs = ", ".join(f"{n}: {s.encoder}" for n, s in predictor.config.inputs.items())
    image = predictor.config.inputs["image"].options
    print(
        f"\nrows/s predicting {rows} rows with one saved model ({inputs}; image width "
        f"{image['width']} @ {image['image_size']} px; {predictor.config.fusion.name} fusion; "
        f"{params:,} parameters), {args.repeats} round(s)\n"
    )
    print(
        "| method | rows/s | / naive | / workers=0 | peak RSS growth MiB (process) | "
        "peak anon. memory growth MiB (process + workers) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    med = {m: statistics.median(r) for m, r in rates.items()}
    for method in METHODS:
        vs_naive = statistics.median(a / b for a, b in zip(rates[method], rates["naive"]))
        vs_w0 = statistics.median(a / b for a, b in zip(rates[method], rates["workers=0"]))
        rss, anon = memory.get(method, (float("nan"), float("nan")))
        print(
            f"| {method} | {med[method]:.1f} | {vs_naive:.2f} | {vs_w0:.2f} | "
            f"{rss:.0f} | {anon:.0f} |"
        )
    print(
        f"(rows/s: median over rounds; ratios: median over rounds of the ratio within a round, "
        f"> 1 means faster; memory: one untimed round before them; {agreement})"
    )


if __name__ == "__main__":
    main()
