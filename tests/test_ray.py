"""The Ray Data path gives the same predictions as the streamed batch prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import ray

from mmfuse.data.synthetic import make_shapes
from mmfuse.infer.streamed import predict_manifest
from mmfuse.integrations.ray import predict_dataset
from train_helpers import tiny_classifier


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_map_batches_matches_batch_prediction(local_ray, tmp_path):
    make_shapes(tmp_path / "train", 4, 3, seed=0)
    frame = make_shapes(tmp_path / "data", 3, 3, seed=1)
    clf = tiny_classifier(tmp_path / "run")
    clf.fit(tmp_path / "train" / "manifest.csv").save(tmp_path / "model")
    for column in ("image", "audio"):
        frame[column] = [str(tmp_path / "data" / p) for p in frame[column]]
    frame.loc[2, "image"] = str(tmp_path / "missing.png")  # an unreadable row

    got = predict_dataset(ray.data.from_pandas(frame), tmp_path / "model", batch_size=4)
    got = got.to_pandas()
    expected = predict_manifest(
        tmp_path / "model", frame, tmp_path / "p.parquet", progress=False, log=lambda s: None
    )
    want = pd.read_parquet(expected["out"])
    proba = [c for c in want.columns if c.startswith("proba_")]
    np.testing.assert_allclose(
        got[proba].to_numpy(dtype=float), want[proba].to_numpy(dtype=float), atol=1e-5
    )
    assert got["prediction"].tolist()[:2] == want["prediction"].tolist()[:2]
    assert pd.isna(got.loc[2, "prediction"]) and "missing" in got.loc[2, "error"]
