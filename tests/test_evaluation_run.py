"""End to end: manifests → trained model → metrics, ablation, robustness and the report files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score

from mmfuse.data.manifest import read_manifest
from mmfuse.data.synthetic import make_shapes
from mmfuse.evaluate import ablation_variants, accuracy_of, corrupted
from mmfuse.evaluate.corruptions import CORRUPTIONS
from mmfuse.train import TrainConfig
from mmfuse.train.run import dataset_for, model_config_for, train_model
from train_helpers import SMALL_ENCODERS as SMALL


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    make_shapes(root / "train", 12, 3, seed=0)
    make_shapes(root / "test", 6, 3, seed=1)
    train = read_manifest(root / "train" / "manifest.csv")
    test = read_manifest(root / "test" / "manifest.csv")
    config = model_config_for(train, encoders=SMALL)
    train_config = TrainConfig(
        epochs=3, batch_size=8, lr=3e-3, progress=False, cache_dir=str(root / "cache")
    )
    result = train_model(train, config, train_config, root / "run", test=test, log=lambda s: None)
    return result, test, config, train_config, root / "run"


def test_report_files_exist_and_pngs_open(run):
    result, _, _, _, out = run
    assert result.report == out / "report.md"
    text = result.report.read_text()
    for section in ("Ablation", "Robustness"):
        assert section.lower() in text.lower()
    saved = json.loads((out / "metrics.json").read_text())
    assert {"metrics", "history", "ablation", "robustness"} <= set(saved)
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} >= {"confusion.png", "curves.png", "ablation.png"}
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_metrics_equal_sklearn_on_the_model_predictions(run):
    result, test, config, train_config, _ = run
    dataset = dataset_for(test, result.model, config, train_config, train=False)
    out = result.trainer.predict(dataset)
    y, proba = out["labels"]["label"], out["proba"]["all"]["label"]
    pred = proba.argmax(axis=1)
    metrics = result.evaluation["metrics"]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert metrics["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert metrics["n_samples"] == len(test)


def test_ablation_table_matches_removing_the_column_from_the_data(run):
    result, test, config, train_config, _ = run
    ablation = result.evaluation["ablation"]
    names = ["audio", "image", "text"]
    assert list(ablation) == list(ablation_variants(names))
    assert ablation["all"] == pytest.approx(result.evaluation["metrics"]["accuracy"])
    # Masking an input out must equal data in which that column is empty.
    frame = test.frame.copy()
    frame["audio"] = None
    blanked = read_manifest(frame, label="label", root=test.root)
    dataset = dataset_for(blanked, result.model, config, train_config, train=False)
    out = result.trainer.predict(dataset)
    expected = accuracy_of(out["labels"]["label"], out["proba"]["all"]["label"])
    assert ablation["without audio"] == pytest.approx(expected)


def test_robustness_curves_start_clean_and_cover_corruptible_inputs(run):
    result, test, config, train_config, _ = run
    curves = result.evaluation["robustness"]
    assert set(curves) == {"audio", "image"}  # text has no corruption
    clean = result.evaluation["metrics"]["accuracy"]
    for name, curve in curves.items():
        assert len(curve["levels"]) == len(CORRUPTIONS[name].levels)
        assert curve["accuracy"][0] == pytest.approx(clean)
        assert all(np.isfinite(curve["levels"]))
    # The worst level really reached the data: audio at -10 dB differs from the clean input.
    dataset = dataset_for(test, result.model, config, train_config, train=False)
    noisy = corrupted(dataset, {"audio": (CORRUPTIONS["audio"], -10.0)})
    assert not np.allclose(noisy[0]["inputs"]["audio"], dataset[0]["inputs"]["audio"])
