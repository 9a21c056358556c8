"""Embeddings out: per row, the fused vector the model's heads take, or each input's vector.

`level="fused"`: the fusion's output (`MultimodalModel.fuse`), computed under the row's presence
mask by the same encode → fuse steps that prediction runs, so applying the heads to it gives the
row's prediction. Columns `fused_0 .. fused_{F-1}`.

`level="inputs"`: each input's encoder vector, `<input>_0 .. <input>_{D-1}`, plus
`<input>_present`; an absent input's vector is zeros, as the fusion receives it (the mask tells
the fusion to ignore it). With a token-level fusion (transformer) it is the encoder's pooled
vector, the fusion itself taking the tokens.

The table has `row` (the manifest row) and `error` (why a row has no embedding: its files could
not be read; its vector cells are then NaN). `embed_manifest` streams it over a manifest of any
size, in parts, restartable, through `infer.streamed`, as batch prediction does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from mmfuse.errors import MmfuseError
from mmfuse.infer.batch import batches_of, row_loader
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.infer.engine import autocast, to_device
from mmfuse.infer.predictor import Predictor
from mmfuse.infer.streamed import stream_tables
from mmfuse.model.multimodal import MultimodalModel

LEVELS = ("fused", "inputs")


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise MmfuseError(f"level {level!r} is not one of {', '.join(LEVELS)}; e.g. --level fused")
    return level


@torch.no_grad()
def embed_batches(
    model: MultimodalModel,
    batches: Iterable[dict],
    level: str = "fused",
    *,
    device: torch.device,
    precision: str = "fp32",
    cached: Iterable[str] = (),
) -> dict:
    """`{"rows": N, "vectors": {"fused" or input name: N×D}, "present": N×M bool, "skipped"}`
    for every row of the collated `batches`."""
    check_level(level)
    rows, present, skipped = [], [], []
    vectors: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        skipped.extend(batch["skipped"])
        if "inputs" not in batch:
            continue
        inputs, features = to_device(model, batch["inputs"], device, cached=cached)
        mask = batch["mask"].to(device)
        with autocast(device, precision):
            if level == "fused":
                feats, tokens, token_mask = model.encode(inputs, mask, features)
                out = {"fused": model.fuse(feats, mask, tokens, token_mask)}
            else:
                out, _, _ = model.encode(inputs, mask, features, vectors=True)
        for key, value in out.items():
            vectors.setdefault(key, []).append(value.float().cpu())
        rows.append(batch["rows"])
        present.append(batch["mask"])
    width = {n: model.encoders[n].output_dim for n in model.names}
    return {
        "rows": torch.cat(rows).numpy() if rows else np.zeros(0, dtype=np.int64),
        "vectors": {k: torch.cat(v).numpy() for k, v in vectors.items()},
        "present": torch.cat(present).numpy() if present else np.zeros((0, len(width)), bool),
        "skipped": skipped,
        "names": list(model.names),
        "widths": width,
    }


def embed_rows(
    model: MultimodalModel,
    dataset: MultimodalDataset,
    rows: list[int],
    level: str = "fused",
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> pd.DataFrame:
    """The embedding table of `rows` of `dataset` (see the module docstring), in that order."""
    device = torch.device(device)
    model = model.to(device).eval()
    batches = row_loader(dataset, batches_of(rows, batch_size), workers=workers, device=device)
    out = embed_batches(
        model, batches, level, device=device, precision=precision, cached=set(dataset.features)
    )
    return embedding_table(rows, out, level)


def embedding_table(rows: list[int], out: dict, level: str) -> pd.DataFrame:
    """`row`, `error`, then the vector (and presence) columns, one row per entry of `rows`."""
    position = {r: i for i, r in enumerate(rows)}
    done = [position[int(r)] for r in out["rows"]]
    errors: list[str | None] = [None] * len(rows)
    for s in out["skipped"]:
        errors[position[s.row]] = f"{s.column}: {s.reason}: {s.message}"
    keys = ["fused"] if level == "fused" else out["names"]
    blocks = [pd.DataFrame({"row": np.asarray(rows, dtype=np.int64), "error": errors})]
    for k in keys:
        width = out["vectors"][k].shape[1] if k in out["vectors"] else _width(out, k)
        matrix = np.full((len(rows), width), np.nan, dtype=np.float32)
        if k in out["vectors"]:
            matrix[done] = out["vectors"][k]
        blocks.append(pd.DataFrame(matrix, columns=[f"{k}_{i}" for i in range(width)]))
    if level == "inputs":
        present = np.zeros((len(rows), len(out["names"])), dtype=bool)
        present[done] = out["present"]
        names = [f"{n}_present" for n in out["names"]]
        blocks.append(pd.DataFrame(present, columns=names))
    return pd.concat(blocks, axis=1)


def _width(out: dict, key: str) -> int:
    # No row was embedded (every one failed): the fused width is unknown, an input's is not.
    return out["widths"].get(key, 0)


def embed_manifest(
    model,
    source,
    out: str | os.PathLike,
    *,
    level: str = "fused",
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    batch_size: int = 64,
    chunk_rows: int = 4096,
    workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Embed every row of `source` in shard `shard` into `out` (.parquet or .csv), streamed in
    parts like `infer.streamed.predict_manifest` (same `shard`, `resume` and chunking).
    `model` is a model folder or a `Predictor`. Returns `{"out", "rows", "failed", ...}`."""
    check_level(level)
    predictor = model if isinstance(model, Predictor) else Predictor(model)

    def table_of(dataset, rows):
        return embed_rows(
            predictor.model,
            dataset,
            rows,
            level,
            batch_size=batch_size,
            workers=workers,
            device=predictor.device,
        )

    options = {"shard": shard, "resume": resume, "chunk_rows": chunk_rows, "progress": progress}
    job = {"embed": level}
    return stream_tables(
        predictor, source, out, table_of, job, **options, log=log, what="embedding"
    )
