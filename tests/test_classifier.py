"""The scikit-learn-style API and the saved model folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from mmfuse.classifier import MultimodalClassifier, NotFittedError
from mmfuse.data.synthetic import make_shapes
from mmfuse.errors import CheckpointError
from train_helpers import SMALL_ENCODERS as ENCODERS


def small(**overrides) -> MultimodalClassifier:
    params = {
        "encoders": ENCODERS,
        "epochs": 6,
        "batch_size": 4,
        "lr": 1e-2,
        "fusion_dim": 32,
        "device": "cpu",
        "verbose": False,
        "train_options": {"tensorboard": False},
    }
    params.update(overrides)
    return MultimodalClassifier(**params)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    make_shapes(root / "train", 8, 3, seed=0)
    make_shapes(root / "val", 4, 3, seed=1)
    clf = small(out_dir=root / "run")
    assert clf.fit(root / "train" / "manifest.csv", val=root / "val" / "manifest.csv") is clf
    return clf, root


def test_params_round_trip_and_clone():
    clf = small(epochs=3)
    assert clf.get_params()["epochs"] == 3
    clf.set_params(epochs=5, fusion="gated")
    twin = clone(clf)
    assert twin.get_params() == clf.get_params()
    assert not hasattr(twin, "model_")


def test_unfitted_model_says_what_to_do():
    with pytest.raises(NotFittedError, match="fit"):
        small().predict(pd.DataFrame({"text": ["x"]}))


def test_fit_predict_evaluate(fitted):
    clf, root = fitted
    val = root / "val" / "manifest.csv"
    proba = clf.predict_proba(val)
    assert proba.shape == (12, 3)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    pred = clf.predict(val)
    assert set(pred) <= set(clf.classes_)
    truth = pd.read_csv(val)["label"].to_numpy()
    metrics = clf.evaluate(val)
    assert metrics["accuracy"] == pytest.approx(float((pred == truth).mean()))
    assert metrics["accuracy"] >= 0.8, clf.history_
    # Robustness curves re-encode the data at every corruption level: fit asks for them.
    assert "robustness" not in clf.evaluation_ and "ablation" in clf.evaluation_


def test_predict_with_a_missing_modality_and_no_label(fitted):
    clf, root = fitted
    frame = pd.read_csv(root / "val" / "manifest.csv").drop(columns=["label"])
    frame["image"] = [str(root / "val" / p) for p in frame["image"]]
    frame["audio"] = None
    pred = clf.predict(frame)
    assert len(pred) == len(frame) and all(p in clf.classes_ for p in pred)


def test_save_load_gives_the_same_predictions(fitted, tmp_path):
    clf, root = fitted
    folder = clf.save(tmp_path / "model")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "labels.json", "model.safetensors", "metrics.json", "report.md"} <= names
    assert json.loads((folder / "labels.json").read_text()) == {"label": list(clf.classes_)}
    loaded = MultimodalClassifier.load(folder)
    val = root / "val" / "manifest.csv"
    np.testing.assert_allclose(loaded.predict_proba(val), clf.predict_proba(val), atol=1e-6)


def test_load_refuses_newer_formats_and_damaged_weights(fitted, tmp_path):
    clf, _ = fitted
    folder = clf.save(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["format"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Upgrade mmfuse"):
        MultimodalClassifier.load(folder)

    folder = clf.save(tmp_path / "model2")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged"):
        MultimodalClassifier.load(folder)
    with pytest.raises(CheckpointError, match="not an mmfuse model folder"):
        MultimodalClassifier.load(tmp_path)


def test_a_model_folder_with_an_edited_config_is_one_sentence(fitted, tmp_path):
    import json

    from mmfuse.errors import CheckpointError
    from mmfuse.model.saved import load_model

    clf, _ = fitted
    folder = clf.save(tmp_path / "model")
    saved = json.loads((folder / "config.json").read_text())
    first = next(iter(saved["model"]["inputs"]))
    saved["model"]["inputs"][first]["encoder"] = "no-such-encoder"
    (folder / "config.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match=r"cannot be built .*restore the folder"):
        load_model(folder)


def test_a_model_with_a_nan_weight_is_not_saved(fitted, tmp_path):
    import copy

    import torch

    from mmfuse.errors import CheckpointError

    clf, _ = fitted
    broken = copy.deepcopy(clf)
    name, tensor = next(
        (n, t) for n, t in broken.model_.state_dict().items() if t.is_floating_point()
    )
    tensor.fill_(float("nan"))
    with pytest.raises(CheckpointError, match=rf"{name}.*NaN or Inf"):
        broken.save(tmp_path / "model")
    assert not (tmp_path / "model" / "model.safetensors").exists()
    assert torch.isfinite(next(iter(clf.model_.state_dict().values()))).all()
