"""Temperature scaling and ECE: the maths on known cases, then a trained model end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmfuse.classifier import MultimodalClassifier
from mmfuse.data.synthetic import make_shapes
from mmfuse.evaluate.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    untempered,
)
from mmfuse.model.saved import CONFIG, load_model
from train_helpers import tiny_classifier


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n: int = 4000, true_t: float = 2.5, seed: int = 0):
    """Labels drawn from softmax(z / true_t) and the model's softmax(z): too confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size=(n, 5))
    truth = _softmax(z / true_t)
    y = np.array([rng.choice(5, p=p) for p in truth])
    return y, _softmax(z)


def test_fit_temperature_recovers_the_true_temperature_and_lowers_ece():
    y, proba = _overconfident()
    t = fit_temperature(y, proba)
    assert t == pytest.approx(2.5, rel=0.1)
    calibrated = _softmax(np.log(proba) / t)
    before, after = expected_calibration_error(y, proba), expected_calibration_error(y, calibrated)
    assert after < 0.03 < before
    assert (calibrated.argmax(1) == proba.argmax(1)).all()  # accuracy is unchanged


def test_a_validation_split_without_mistakes_does_not_sharpen_without_bound():
    """30 rows all classified right: the NLL falls all the way to T -> 0; the prior on log T
    stops it where the data's pull is as weak as 30 rows make it."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1, size=(30, 4))
    y = z.argmax(1)  # the model is right on every row, with modest margins
    t = fit_temperature(y, _softmax(z))
    assert 0.1 < t < 1.0
    # Many rows: the prior's pull is 1/n of the NLL's and the MLE comes back.
    y, proba = _overconfident(n=4000, true_t=0.5, seed=1)
    assert fit_temperature(y, proba) == pytest.approx(0.5, rel=0.1)


def test_ece_by_hand():
    # Two rows at confidence 0.9 (one right), two at 0.6 (both right):
    # ECE = 0.5·|0.9 − 0.5| + 0.5·|0.6 − 1| = 0.4.
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    assert expected_calibration_error(y, proba) == pytest.approx(0.4)
    bins = reliability_bins(y, proba)
    assert sum(bins["count"]) == 4 and len(bins["count"]) == 15
    # Rows without a label (negative) are left out; none at all gives None.
    assert expected_calibration_error(np.array([0, 1, 1, 1, -100]), np.vstack([proba, [[1, 0]]]))
    assert expected_calibration_error(np.array([-100]), np.array([[0.5, 0.5]])) is None


def test_untempered_undoes_the_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, size=(50, 4))
    np.testing.assert_allclose(untempered(_softmax(z / 1.7), 1.7), _softmax(z), atol=1e-9)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    make_shapes(root / "train", 8, 3, seed=0)
    make_shapes(root / "val", 4, 3, seed=1)
    clf = tiny_classifier(root / "run", epochs=4, lr=1e-2)
    clf.fit(root / "train" / "manifest.csv", val=root / "val" / "manifest.csv")
    return clf, root


def test_training_with_a_validation_split_calibrates_and_reports_ece(calibrated):
    clf, root = calibrated
    t = clf.model_.temperatures()["label"]
    assert t != 1.0
    metrics = clf.evaluation_["metrics"]
    assert metrics["temperature"] == pytest.approx(t)
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["ece_uncalibrated"] <= 1
    saved = json.loads((root / "run" / "metrics.json").read_text())
    assert set(saved["calibration"]["label"]) == {"temperature", "before", "after"}
    assert "## Calibration" in (root / "run" / "report.md").read_text()
    with Image.open(root / "run" / "reliability.png") as im:
        im.verify()


def test_the_temperature_is_saved_and_an_old_folder_loads_with_t_1(calibrated, tmp_path):
    clf, root = calibrated
    clf.save(tmp_path / "model")
    model, _, _ = load_model(tmp_path / "model")
    assert model.temperatures() == pytest.approx(clf.model_.temperatures())
    again = MultimodalClassifier.load(tmp_path / "model")
    data = root / "val" / "manifest.csv"
    np.testing.assert_allclose(again.predict_proba(data), clf.predict_proba(data), atol=1e-6)
    # A format-1 folder (before calibration) has no temperature tensor: it loads with T = 1.
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "model" / "model.safetensors"
    state = load_file(weights)
    del state["temperature"]
    save_file(state, weights)
    config = json.loads((tmp_path / "model" / CONFIG).read_text())
    config["format"] = 1
    (tmp_path / "model" / CONFIG).write_text(json.dumps(config))
    old, _, _ = load_model(tmp_path / "model")
    assert torch.equal(old.temperature, torch.ones(1))


def test_calibration_can_be_turned_off(tmp_path):
    make_shapes(tmp_path / "train", 4, 3, seed=0)
    clf = tiny_classifier(
        tmp_path / "run", train_options={"tensorboard": False, "calibrate": False}
    )
    data = tmp_path / "train" / "manifest.csv"
    clf.fit(data, val=data)
    assert clf.model_.temperatures() == {"label": 1.0}
