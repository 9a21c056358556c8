"""Size, latency and accuracy of a model before and after shipping it, as one table.

    rows = export_report("model/", [("onnx fp32", "model.onnx")], "val.csv")
    print(format_report(rows, "on val.csv:"))

A runner maps a collated batch to `{task: B×C probabilities}`; `measure` times any runner on the
same `EvalData`, so torch, onnxruntime and pruned models are compared on identical batches.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfuse.device import threads as torch_threads
from mmfuse.infer.engine import forward
from mmfuse.model.multimodal import MultimodalModel
from mmfuse.ship.runtime import onnx_feeds, onnx_session, tokenizers
from mmfuse.ship.sidecar import ExportError, read_sidecar

Runner = Callable[[dict], dict[str, np.ndarray]]


@dataclass
class Measured:
    """One row of the before/after table."""

    name: str
    size: int  # bytes on disk
    latency_1: float  # median ms per sample at batch 1
    latency_32: float  # median ms per sample at batch 32
    accuracy: dict[str, float]  # per task
    extra: dict | None = None  # more size columns (safetensors.gz for pruned models)


class EvalData:
    """A labelled manifest loaded once for a model's inputs: the rows as collated batches."""

    def __init__(self, model_dir: str | os.PathLike, manifest, *, batch_size: int = 32):
        from mmfuse.data.manifest import read_manifest
        from mmfuse.infer.batch import collate
        from mmfuse.infer.dataset import MultimodalDataset, Skipped
        from mmfuse.model.saved import load_model

        model, config, _ = load_model(model_dir)
        roles = {spec.column: spec.modality for spec in config.inputs.values()}
        tasks = {h.task: list(h.classes) for h in config.heads}
        if not hasattr(manifest, "frame"):
            manifest = read_manifest(manifest, label=list(tasks), modalities=roles)
        specs = {n: model.encoders[n].input_spec for n in model.names}
        dataset = MultimodalDataset(manifest, config.inputs, specs, tasks)
        items = [dataset[i] for i in range(len(dataset))]
        self.items = [i for i in items if not isinstance(i, Skipped)]
        if not self.items:
            raise ExportError(f"{manifest.source}: no row could be loaded to measure on")
        self.source = manifest.source
        self.tasks = tasks
        self.modalities = {n: config.inputs[n].modality for n in model.names}
        self.tokenizers = tokenizers(model, self.modalities)
        self.batches = [
            collate(self.items[i : i + batch_size]) for i in range(0, len(self.items), batch_size)
        ]
        cycled = [self.items[i % len(self.items)] for i in range(32)]
        self.timing = {1: collate(self.items[:1]), 32: collate(cycled)}


# ---------------------------------------------------------------------------------- runners
def torch_runner(model: MultimodalModel) -> Runner:
    """Batch → per-task probabilities through `mmfuse.infer.engine.forward`, the model's own
    (masked) forward."""
    model.eval()

    def run(batch: dict) -> dict[str, np.ndarray]:
        out = forward(model, batch["inputs"], batch["mask"])
        return {t: p.numpy() for t, p in out.probabilities.items()}

    return run


def onnx_runner(
    onnx_path: str | os.PathLike, tokenizers: Mapping, threads: int | None = None
) -> Runner:
    """Batch → per-task probabilities through onnxruntime."""
    session = onnx_session(onnx_path, threads)
    sidecar = read_sidecar(onnx_path)
    tasks = [o["task"] for o in sidecar["outputs"]]

    def run(batch: dict) -> dict[str, np.ndarray]:
        feeds = onnx_feeds(batch["inputs"], batch["mask"], sidecar, tokenizers)
        return dict(zip(tasks, session.run(None, feeds)))

    return run


# ---------------------------------------------------------------------------------- measuring
def measure(
    name: str,
    run: Runner,
    data: EvalData,
    size: int,
    *,
    repeats: int = 20,
    extra: dict | None = None,
) -> Measured:
    """Accuracy over `data`, then median per-sample latency at batch 1 and batch 32."""
    scores = accuracy(run, data)  # also warms the runner up before the timed calls
    latency = {b: _latency(run, batch, b, repeats) for b, batch in data.timing.items()}
    return Measured(name, size, latency[1], latency[32], scores, extra)


def accuracy(run: Runner, data: EvalData) -> dict[str, float]:
    """Per task: the share of labelled rows whose argmax is the label (nan: none labelled)."""
    correct = {t: 0 for t in data.tasks}
    labelled = {t: 0 for t in data.tasks}
    for batch in data.batches:
        proba = run(batch)
        for t in data.tasks:
            y = batch["labels"][t].numpy()
            keep = y >= 0
            correct[t] += int((proba[t].argmax(axis=1)[keep] == y[keep]).sum())
            labelled[t] += int(keep.sum())
    return {t: correct[t] / labelled[t] if labelled[t] else float("nan") for t in data.tasks}


def _latency(run: Runner, batch: dict, batch_size: int, repeats: int) -> float:
    """Median ms per sample; batch 32 is timed a quarter as often as batch 1."""
    for _ in range(3):  # warm-up: allocator, lazy kernels
        run(batch)
    times = []
    for _ in range(max(1, repeats if batch_size == 1 else repeats // 4)):
        start = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - start) * 1000 / batch_size)
    return float(np.median(times))


def gzip_size(path: str | os.PathLike) -> int:
    """Bytes of `path` gzipped (level 6): where unstructured zeros show."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=6, mtime=0))


def export_report(
    model_dir: str | os.PathLike,
    onnx_paths: Sequence[tuple[str, str | os.PathLike]],
    manifest,
    *,
    repeats: int = 20,
    threads: int | None = None,
) -> list[Measured]:
    """Measure the torch model folder and each `(name, onnx file)` on a labelled manifest.

    `threads` sets both runtimes' intra-op threads (default: each runtime's own choice).
    """
    from mmfuse.model.saved import WEIGHTS, load_model

    data = EvalData(model_dir, manifest)
    model, _, _ = load_model(model_dir)
    with torch_threads(threads):
        size = (Path(model_dir) / WEIGHTS).stat().st_size
        rows = [measure("torch", torch_runner(model), data, size, repeats=repeats)]
    for name, path in onnx_paths:
        runner = onnx_runner(path, data.tokenizers, threads)
        rows.append(measure(name, runner, data, Path(path).stat().st_size, repeats=repeats))
    return rows


def compress_report(
    model_dir: str | os.PathLike,
    pruned_dir: str | os.PathLike,
    manifest,
    *,
    repeats: int = 20,
    threads: int | None = None,
) -> list[Measured]:
    """Size (safetensors, gzipped), torch latency and accuracy of both model folders."""
    from mmfuse.model.saved import WEIGHTS, load_model

    data = EvalData(model_dir, manifest)
    rows = []
    for name, folder in (("original", model_dir), ("pruned", pruned_dir)):
        model, _, _ = load_model(folder)
        weights = Path(folder) / WEIGHTS
        size, packed = weights.stat().st_size, {"gzip": gzip_size(weights)}
        with torch_threads(threads):
            run = torch_runner(model)
            rows.append(measure(name, run, data, size, repeats=repeats, extra=packed))
    return rows


# ---------------------------------------------------------------------------------- the table
def format_report(rows: Sequence[Measured], title: str = "") -> str:
    """The before/after table (plain text, aligned), with the change of the last row vs the first.

    Columns: size (MB on disk), any extra size columns, median ms/sample at batch 1 and 32,
    accuracy per task.
    """
    extra_cols = list(dict.fromkeys(k for r in rows for k in r.extra or {}))
    tasks = list(rows[0].accuracy)
    acc_cols = ["accuracy"] if len(tasks) == 1 else [f"acc:{t}" for t in tasks]
    header = ["model", "size MB", *[f"{k} MB" for k in extra_cols]]
    header += ["ms/sample b=1", "ms/sample b=32", *acc_cols]
    table = [_cells(r, extra_cols, tasks) for r in rows]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    lines = [title] if title else []
    for i, row in enumerate([header, *table]):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if len(rows) > 1:
        lines.append(_change(rows[0], rows[-1], extra_cols, tasks))
    return "\n".join(lines)


def _cells(r: Measured, extra_cols: Sequence[str], tasks: Sequence[str]) -> list[str]:
    cells = [r.name, _mb(r.size)]
    cells += [_mb((r.extra or {}).get(k)) for k in extra_cols]
    cells += [f"{r.latency_1:.3f}", f"{r.latency_32:.3f}"]
    return cells + [f"{r.accuracy[t]:.4f}" for t in tasks]


def _change(first: Measured, last: Measured, extra_cols: Sequence[str], tasks) -> str:
    """`last vs first: size ×…, latency ×…, accuracy ±…`, the table's closing line."""
    sizes = [f"size ×{last.size / first.size:.2f}"]
    for k in extra_cols:
        a, b = (first.extra or {}).get(k), (last.extra or {}).get(k)
        if a and b:
            sizes.append(f"{k} ×{b / a:.2f}")
    return (
        f"{last.name} vs {first.name}: {', '.join(sizes)}, "
        f"batch-1 latency ×{last.latency_1 / first.latency_1:.2f}, batch-32 latency "
        f"×{last.latency_32 / first.latency_32:.2f}, accuracy "
        + ", ".join(f"{last.accuracy[t] - first.accuracy[t]:+.4f}" for t in tasks)
    )


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.3f}"
