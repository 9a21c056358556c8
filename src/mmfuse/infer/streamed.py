"""Batch prediction over a manifest of any size: streamed, sharded, restartable.

Rows are cut into chunks of `chunk_rows`; each chunk is decoded in DataLoader workers, predicted
in batches through `infer.engine`, the path the HTTP service also predicts through, and written as
its own Parquet part file. A killed run restarted with `resume=True` skips the parts already
written: no row is predicted twice or missed. At the end the parts are concatenated, one at a
time, into the output file.

Every file is written under a temporary name, flushed to disk and renamed into place (the parts,
`job.json` and the output), so a kill at any point leaves each file complete or absent; a rerun
never appends to a leftover: it deletes the temporary files of a killed run and writes afresh.
Each part must hold exactly the rows of its chunk, and the count reported is the count written.

`shard=(i, n)` takes the i-th of n contiguous, equal slices of the rows, so n machines (or a
job array) can split a corpus and the shards' outputs, concatenated in order, are exactly the
unsharded output.

A row whose probabilities come out non-finite (NaN or Inf) gets no prediction and an `error`
cell saying so, as a row whose files could not be read.

Test hook, for the kill-at-every-stage test only: with `$MMFUSE_TEST_PAUSE_AT` set to a stage in
`STAGES`, the process prints `paused at <stage>` to stderr when it gets there and sleeps, so
that the test can SIGKILL it at exactly that point: after a part file is in place (`part`), with
the output half written (`combine`), after the output's rename (`rename`) and with the parts
folder renamed away but not yet deleted (`cleanup`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmfuse.data.manifest import Manifest, read_manifest
from mmfuse.errors import MmfuseError
from mmfuse.infer.batch import batches_of, row_loader
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.infer.engine import predict_batches
from mmfuse.infer.predictor import Predictor
from mmfuse.infer.table import prediction_table

PART = "part-{:06d}.parquet"
JOB = "job.json"
# Test-only (see the module docstring): where a run may be made to pause, in the order reached.
PAUSE_ENV = "MMFUSE_TEST_PAUSE_AT"
STAGES = ("part", "combine", "rename", "cleanup")
NON_FINITE = (
    "prediction: non-finite: the model's probabilities for this row are NaN or Inf (an input "
    "holds extreme values, or the model's weights are not finite)"
)


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

    Returns `{"out", "rows", "failed", "parts_reused"}`: `rows` is the number of rows written
    to `out`, `failed` those without a prediction. Output columns: `row` (the manifest row), the
    model's input columns, `prediction` (empty where the files could not be read or the
    probabilities are not finite), `error` (why), and with `proba` one `proba_<class>` column
    per class.
    """
    predictor = model if isinstance(model, Predictor) else Predictor(model)

    def table_of(data, rows):
        return _predict_chunk(predictor, data, rows, batch_size, workers, proba)

    options = {"shard": shard, "resume": resume, "chunk_rows": chunk_rows, "progress": progress}
    return stream_tables(predictor, source, out, table_of, {"proba": proba}, **options, log=log)


def stream_tables(
    predictor: Predictor,
    source,
    out: str | os.PathLike,
    table_of: Callable[[MultimodalDataset, list[int]], pd.DataFrame],
    job: dict,
    *,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    chunk_rows: int = 4096,
    progress: bool = True,
    log: Callable[[str], None] = print,
    what: str = "prediction",
) -> dict:
    """The streaming behind `predict_manifest` and `infer.embed.embed_manifest`: the rows of
    `source` in `shard`, chunk by chunk, `table_of(dataset, rows)` written as a part file each,
    then concatenated into `out`. `job` (JSON-safe) is what else makes a resumed run the same
    job. A table has `row` and `error` (None where the row is fine) columns."""
    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise MmfuseError(f"--out {out}: use a .parquet or .csv file name")
    if chunk_rows < 1:
        raise MmfuseError(f"chunk_rows={chunk_rows}: give at least 1 row per part")
    manifest = _manifest(predictor, source)
    start, stop = shard_bounds(len(manifest), *shard)
    parts = out.with_name(out.name + ".parts")
    _remove_leftovers(out, parts)
    reused = _prepare_parts(parts, {**_job(predictor, manifest, shard, chunk_rows), **job}, resume)
    chunks = [(first, min(first + chunk_rows, stop)) for first in range(start, stop, chunk_rows)]
    dataset = predictor.dataset(manifest)
    bar = _progress_bar(progress, chunks, reused, start, stop)
    for k, (first, last) in enumerate(chunks):
        if k in reused:
            continue
        rows = list(range(first, last))
        _write_part(parts / PART.format(k), table_of(dataset, rows))
        _pause_at("part")
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    total, failed_total = _combine(parts, chunks, out)
    _pause_at("rename")
    _remove_parts(parts)
    missing = f" ({failed_total} without a {what}: the `error` column says why)"
    log(f"wrote {total} rows to {out}" + missing * bool(failed_total))
    return {"out": out, "rows": total, "failed": failed_total, "parts_reused": len(reused)}


def _job(predictor: Predictor, manifest: Manifest, shard, chunk_rows: int) -> dict:
    """What `job.json` records: a resumed run must be the same job."""
    return {
        "model": str(predictor.model_dir.resolve()),
        "source": _source_key(manifest.source),
        "rows": len(manifest),
        "shard": list(shard),
        "chunk_rows": chunk_rows,
    }


def _pause_at(stage: str) -> None:
    """Test-only: with $MMFUSE_TEST_PAUSE_AT=stage, say so and sleep (a test SIGKILLs us)."""
    if os.environ.get(PAUSE_ENV) == stage:
        print(f"paused at {stage}", file=sys.stderr, flush=True)
        time.sleep(600)


def _progress_bar(enabled: bool, chunks: list[tuple[int, int]], reused: set[int], start, stop):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    done_rows = sum(last - first for k, (first, last) in enumerate(chunks) if k in reused)
    return tqdm(total=stop - start, initial=done_rows, unit="row", desc="predicting")


def _manifest(predictor: Predictor, source) -> Manifest:
    if isinstance(source, Manifest):
        return source
    roles = {spec.column: spec.modality for spec in predictor.config.inputs.values()}
    return read_manifest(source, modalities=roles)


def _source_key(source: str) -> str:
    """The manifest as `job.json` records it: a file's absolute path, so that the same file
    named relative or absolute (or through `..`) is the same job."""
    return source if source.startswith("<") else str(Path(source).expanduser().resolve())


def _prepare_parts(parts: Path, job: dict, resume: bool) -> set[int]:
    """The chunk numbers already written by an earlier run of the same job (with `resume`)."""
    saved = _saved_job(parts) if resume else None
    if saved is not None:
        if saved != job:
            raise MmfuseError(
                f"{parts} holds parts of another job ({saved}); drop --resume to start over, or "
                "resume with the same model, manifest, --shard and chunk size"
            )
        for stale in parts.glob(".*.tmp"):  # a part a killed run was writing
            stale.unlink(missing_ok=True)
        return {int(p.stem.split("-")[1]) for p in parts.glob("part-*.parquet")}
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    _write_atomic(parts / JOB, lambda tmp: tmp.write_text(json.dumps(job)))
    return set()


def _saved_job(parts: Path) -> dict | None:
    """The job of an earlier run's parts; None where there is none (no parts: start afresh)."""
    if not (parts / JOB).is_file():
        return None  # job.json is written before any part: without it there is nothing to keep
    saved = json.loads((parts / JOB).read_text())
    if isinstance(saved.get("source"), str):
        saved["source"] = _source_key(saved["source"])  # a job.json of an older version
    return saved


def _remove_leftovers(out: Path, parts: Path) -> None:
    """Delete what a killed run leaves beside `out`: temporary outputs, a parts folder that
    was being removed. (Never appended to: a rerun writes its output afresh.)"""
    for stale in out.parent.glob(f".{out.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    for stale in out.parent.glob(f".{parts.name}.removing-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _remove_parts(parts: Path) -> None:
    """Remove the parts folder in one step as `--resume` sees it: renamed, then deleted."""
    doomed = parts.with_name(f".{parts.name}.removing-{os.getpid()}")
    os.replace(parts, doomed)
    _pause_at("cleanup")
    shutil.rmtree(doomed)


def predict_rows(
    predictor: Predictor,
    dataset: MultimodalDataset,
    rows: list[int],
    *,
    task: str | None = None,
    batch_size: int = 64,
    workers: int = 0,
) -> tuple[np.ndarray, list[str | None]]:
    """`(N×C probabilities of `task`, NaN where a row has no prediction; why, per row)` for
    `rows` of `dataset`, decoded in `workers` processes, through `infer.engine`.

    A row has no prediction when its files could not be read, or when its probabilities are
    not finite (NaN or Inf): such probabilities are never given out.
    """
    task = task or predictor.task
    batches = row_loader(dataset, batches_of(rows, batch_size), workers=workers)
    classes = {t: len(c) for t, c in predictor.labels.items()}
    out = predict_batches(predictor.model, batches, classes, device=predictor.device)
    position = {r: i for i, r in enumerate(rows)}
    probs = np.full((len(rows), classes[task]), np.nan, dtype=np.float32)
    predicted = [position[r] for r in out["rows"]]
    probs[predicted] = out["proba"]["all"][task]
    errors: list[str | None] = [None] * len(rows)
    for i in predicted:
        if not np.isfinite(probs[i]).all():
            probs[i] = np.nan
            errors[i] = NON_FINITE
    for s in out["skipped"]:
        errors[position[s.row]] = f"{s.column}: {s.reason}: {s.message}"
    return probs, errors


def _predict_chunk(predictor, dataset, rows, batch_size, workers, proba) -> pd.DataFrame:
    probs, errors = predict_rows(predictor, dataset, rows, batch_size=batch_size, workers=workers)
    return prediction_table(
        dataset.manifest.frame,
        rows,
        {c.column for c in predictor.config.inputs.values()},
        predictor.labels[predictor.task],
        probs,
        errors=errors,
        with_proba=proba,
        as_text=True,
    )


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write(temporary path)`, flushed to disk, then renamed to `path`: complete or absent."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (where the platform lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_part(path: Path, table: pd.DataFrame) -> None:
    data = pa.Table.from_pandas(table, schema=_schema(table), preserve_index=False)
    _write_atomic(path, lambda tmp: pq.write_table(data, tmp))


def _read_part(parts: Path, k: int, first: int, last: int) -> pa.Table:
    """Part `k`, checked to hold exactly the rows [first, last) of its chunk, in order."""
    table = pq.read_table(parts / PART.format(k))
    rows = table.column("row").to_numpy()
    if not np.array_equal(rows, np.arange(first, last)):
        raise MmfuseError(
            f"{parts / PART.format(k)} holds {len(rows)} rows, not rows {first}..{last - 1} of "
            "its chunk; delete the parts folder (or drop --resume) to predict again"
        )
    return table


def _combine(parts: Path, chunks: list[tuple[int, int]], out: Path) -> tuple[int, int]:
    """Concatenate the parts in order into `out`, one part in memory at a time, under a
    temporary name renamed at the end. Returns (rows written, rows without a prediction)."""
    counts = [0, 0]

    def write(tmp: Path) -> None:
        if out.suffix.lower() == ".parquet":
            _combine_parquet(parts, chunks, tmp, counts)
        else:
            _combine_csv(parts, chunks, tmp, counts)

    _write_atomic(out, write)
    return counts[0], counts[1]


def _combine_parquet(parts: Path, chunks, tmp: Path, counts: list[int]) -> None:
    writer = None
    try:
        for k, (first, last) in enumerate(chunks):
            table = _read_part(parts, k, first, last)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            _count(counts, table)
            _pause_at("combine")
        if writer is None:  # no rows in this shard
            pq.write_table(pa.table({"row": pa.array([], pa.int64())}), tmp)
    finally:
        if writer is not None:
            writer.close()
    written = pq.read_metadata(tmp).num_rows
    if written != counts[0]:  # pragma: no cover - a bug, not a user error
        raise MmfuseError(f"{tmp} holds {written} rows where {counts[0]} were written")


def _combine_csv(parts: Path, chunks, tmp: Path, counts: list[int]) -> None:
    with open(tmp, "w", newline="") as handle:  # "w": never onto a leftover
        for k, (first, last) in enumerate(chunks):
            table = _read_part(parts, k, first, last)
            table.to_pandas().to_csv(handle, header=k == 0, index=False)
            _count(counts, table)
            handle.flush()
            _pause_at("combine")
        if not chunks:
            pd.DataFrame({"row": []}).to_csv(handle, index=False)


def _count(counts: list[int], table: pa.Table) -> None:
    counts[0] += table.num_rows
    counts[1] += table.num_rows - table.column("error").null_count


def _schema(table: pd.DataFrame) -> pa.Schema:
    # Fixed types, so a chunk whose `error` (or a text column) is all empty still matches the rest.
    def kind(c: str):
        if c == "row":
            return pa.int64()
        if pd.api.types.is_bool_dtype(table[c]):
            return pa.bool_()
        return pa.float32() if pd.api.types.is_float_dtype(table[c]) else pa.string()

    return pa.schema([(c, kind(c)) for c in table.columns])
