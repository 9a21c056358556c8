"""Batch prediction over a manifest of any size: streamed, sharded, restartable.

Rows are cut into chunks of `chunk_rows`; each chunk is decoded in DataLoader workers, predicted
in batches through `infer.engine`, the path the HTTP service also predicts through, and written as
its own Parquet part file (temp file + rename, so a part is complete or absent). A killed run
restarted with `resume=True` skips the parts already written: no row is predicted twice or
missed. At the end the parts are concatenated, one at a time, into the output file.

`shard=(i, n)` takes the i-th of n contiguous, equal slices of the rows, so n machines (or a
job array) can split a corpus and the shards' outputs, concatenated in order, are exactly the
unsharded output.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mmfuse.data.manifest import Manifest, read_manifest
from mmfuse.errors import MmfuseError
from mmfuse.infer.batch import collate
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.infer.engine import predict_batches
from mmfuse.infer.predictor import Predictor
from mmfuse.infer.table import prediction_table

PART = "part-{:06d}.parquet"
JOB = "job.json"


def shard_bounds(n_rows: int, index: int, count: int) -> tuple[int, int]:
    """Rows [start, stop) of shard `index` of `count`: contiguous, sizes differ by at most one."""
    if not (isinstance(count, int) and count >= 1 and 0 <= index < count):
        raise MmfuseError(f"--shard {index}/{count}: need 0 <= i < n, e.g. --shard 0/4")
    return n_rows * index // count, n_rows * (index + 1) // count


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise MmfuseError(f"--shard {text!r}: write it as i/n, e.g. 0/4") from None
    shard_bounds(0, i, n)
    return i, n


def predict_manifest(
    model: str | os.PathLike | Predictor,
    source,
    out: str | os.PathLike,
    *,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    batch_size: int = 64,
    chunk_rows: int = 4096,
    workers: int = 0,
    proba: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Predict every row of `source` in shard `shard` into `out` (.parquet or .csv).

    Returns `{"out", "rows", "failed", "parts_reused"}`. Output columns: `row` (the manifest
    row), the model's input columns, `prediction` (empty where the files could not be read),
    `error` (why), and with `proba` one `proba_<class>` column per class.
    """
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise MmfuseError(f"--out {out}: use a .parquet or .csv file name")
    manifest = _manifest(predictor, source)
    start, stop = shard_bounds(len(manifest), *shard)
    parts = out.with_name(out.name + ".parts")
    job = {
        "model": str(predictor.model_dir.resolve()),
        "source": manifest.source,
        "rows": len(manifest),
        "shard": list(shard),
        "chunk_rows": chunk_rows,
        "proba": proba,
    }
    reused = _prepare_parts(parts, job, resume)
    dataset = predictor.dataset(manifest)
    chunks = list(range(start, stop, chunk_rows))
    bar = _progress_bar(progress, chunks, reused, chunk_rows, start, stop)
    for k, first in enumerate(chunks):
        if k in reused:
            continue
        rows = list(range(first, min(first + chunk_rows, stop)))
        table, _ = _predict_chunk(predictor, dataset, rows, batch_size, workers, proba)
        _write_part(parts / PART.format(k), table)
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    total, failed_total = _combine(parts, len(chunks), out)
    shutil.rmtree(parts)
    log(
        f"wrote {total} predictions to {out}"
        + (f" ({failed_total} unreadable)" * bool(failed_total))
    )
    return {"out": out, "rows": total, "failed": failed_total, "parts_reused": len(reused)}


def _progress_bar(enabled: bool, chunks: list[int], reused: set[int], size: int, start, stop):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    done_rows = sum(min(size, stop - c) for k, c in enumerate(chunks) if k in reused)
    return tqdm(total=stop - start, initial=done_rows, unit="row", desc="predicting")


def _manifest(predictor: Predictor, source) -> Manifest:
    if isinstance(source, Manifest):
        return source
    roles = {spec.column: spec.modality for spec in predictor.config.inputs.values()}
    return read_manifest(source, modalities=roles)


def _prepare_parts(parts: Path, job: dict, resume: bool) -> set[int]:
    """The chunk numbers already written by an earlier run of the same job (with `resume`)."""
    if parts.exists() and resume:
        saved = json.loads((parts / JOB).read_text()) if (parts / JOB).is_file() else None
        if saved != job:
            raise MmfuseError(
                f"{parts} holds parts of another job ({saved}); drop --resume to start over, or "
                "resume with the same model, manifest, --shard and chunk size"
            )
        return {int(p.stem.split("-")[1]) for p in parts.glob("part-*.parquet")}
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    (parts / JOB).write_text(json.dumps(job))
    return set()


def predict_rows(
    predictor: Predictor,
    dataset: MultimodalDataset,
    rows: list[int],
    *,
    task: str | None = None,
    batch_size: int = 64,
    workers: int = 0,
) -> tuple[np.ndarray, list[str | None]]:
    """`(N×C probabilities of `task`, NaN where a row could not be read; why, per row)` for
    `rows` of `dataset`, decoded in `workers` processes, through `infer.engine`."""
    task = task or predictor.task
    size = max(1, batch_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[rows[i : i + size] for i in range(0, len(rows), size)],
        num_workers=workers,
        collate_fn=collate,
    )
    classes = {t: len(c) for t, c in predictor.labels.items()}
    out = predict_batches(predictor.model, loader, classes, device=predictor.device)
    position = {r: i for i, r in enumerate(rows)}
    probs = np.full((len(rows), classes[task]), np.nan, dtype=np.float32)
    probs[[position[r] for r in out["rows"]]] = out["proba"]["all"][task]
    errors: list[str | None] = [None] * len(rows)
    for s in out["skipped"]:
        errors[position[s.row]] = f"{s.column}: {s.reason}: {s.message}"
    return probs, errors


def _predict_chunk(
    predictor, dataset, rows, batch_size, workers, proba
) -> tuple[pd.DataFrame, int]:
    probs, errors = predict_rows(predictor, dataset, rows, batch_size=batch_size, workers=workers)
    table = prediction_table(
        dataset.manifest.frame,
        rows,
        {c.column for c in predictor.config.inputs.values()},
        predictor.labels[predictor.task],
        probs,
        errors=errors,
        with_proba=proba,
        as_text=True,
    )
    return table, int(np.isnan(probs).any(axis=1).sum())


def _write_part(path: Path, table: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = pa.Table.from_pandas(table, schema=_schema(table.columns), preserve_index=False)
    pq.write_table(data, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _combine(parts: Path, count: int, out: Path) -> tuple[int, int]:
    """Concatenate the parts in order into `out`, one part in memory at a time."""
    tmp = out.with_name(f".{out.name}.tmp")
    total = failed = 0
    writer = None
    try:
        for k in range(count):
            table = pq.read_table(parts / PART.format(k))
            total += table.num_rows
            failed += table.column("prediction").null_count
            if out.suffix.lower() == ".parquet":
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            else:
                table.to_pandas().to_csv(tmp, mode="a", header=k == 0, index=False)
        if count == 0:
            pd.DataFrame({"row": []}).to_csv(tmp, index=False)
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, out)
    return total, failed


def _schema(columns) -> pa.Schema:
    # Fixed types, so a chunk whose `error` (or a text column) is all empty still matches the rest.
    def kind(c: str):
        if c == "row":
            return pa.int64()
        return pa.float32() if c.startswith("proba_") else pa.string()

    return pa.schema([(c, kind(c)) for c in columns])
