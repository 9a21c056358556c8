"""Batch prediction on Ray Data, for users who already run Ray (`pip install mmfuse[ray]`).

    import ray
    from mmfuse.integrations.ray import predict_dataset

    ds = ray.data.read_parquet("s3://bucket/corpus.parquet")      # columns as in the manifest
    preds = predict_dataset(ds, "runs/model", concurrency=8)      # lazy, like any Ray dataset
    preds.write_parquet("s3://bucket/preds/")

`map_batches` runs a callable class, so each actor loads the model once and reuses it for
every batch. Preprocessing and the forward pass are `Predictor`'s, the same as the HTTP service
and `mmfuse predict`.
"""

from __future__ import annotations

import os

import numpy as np

from mmfuse.errors import MediaError
from mmfuse.infer.predictor import InputError, Predictor
from mmfuse.infer.table import predicted_labels


class BatchPredictor:
    """The per-actor callable: `{column: array}` batch in, the same batch plus predictions out.

    Adds `prediction` (None where the row could not be read), `error` (why) and one
    `proba_<class>` column per class.
    """

    def __init__(self, model_dir: str, device: str = "cpu"):
        self.predictor = Predictor(model_dir, device=device)
        self.columns = {n: c.column for n, c in self.predictor.config.inputs.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        p = self.predictor
        size = len(next(iter(batch.values())))
        classes = p.labels[p.task]
        proba = np.full((size, len(classes)), np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * size
        prepared, where = [], []
        for i in range(size):
            sample = {n: _cell(batch[c][i]) for n, c in self.columns.items() if c in batch}
            try:
                prepared.append(p.preprocess(sample))
                where.append(i)
            except (MediaError, InputError) as e:
                errors[i] = str(e)
        if prepared:
            for i, result in zip(where, p.predict_tensors(prepared)):
                proba[i] = [result.probabilities[c] for c in classes]
        out = dict(batch)
        out["prediction"] = predicted_labels(proba, classes)
        out["error"] = np.asarray(errors, dtype=object)
        for j, c in enumerate(classes):
            out[f"proba_{c}"] = proba[:, j]
        return out


def predict_dataset(
    dataset,
    model_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    concurrency: int = 1,
    device: str = "cpu",
    num_gpus: float = 0,
):
    """`dataset.map_batches` with the model loaded once per actor; returns the lazy dataset."""
    return dataset.map_batches(
        BatchPredictor,
        fn_constructor_args=(os.fspath(model_dir), device),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_gpus=num_gpus,
    )


def _cell(value):
    """A manifest cell as the readers want it: None for missing, str for paths and text."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)
