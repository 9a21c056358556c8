"""Ensembles: the spec, greedy selection, training with kill-and-resume, the saved folder, and
prediction through every path (classifier, Predictor, evaluate, ONNX)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmfuse.classifier import MultimodalClassifier
from mmfuse.data.manifest import read_manifest
from mmfuse.data.synthetic import make_shapes
from mmfuse.errors import CheckpointError
from mmfuse.evaluate.evaluation import evaluate_model
from mmfuse.infer.predictor import Predictor
from mmfuse.model.config import ConfigError, FusionConfig
from mmfuse.model.ensemble import EnsembleModel
from mmfuse.model.saved import load_model
from mmfuse.train.ensemble import Member, train_ensemble
from mmfuse.train.ensemble_spec import parse_ensemble, selection_metric
from mmfuse.train.run import train_model
from mmfuse.train.selection import greedy_weights, score
from train_helpers import quick_config, state_dicts_equal, tiny_classifier, tiny_model_config


# ---------------------------------------------------------------------------------- the spec
def test_spec_combines_the_axes_into_named_members():
    spec = parse_ensemble(["fusion=attention,gated", "seeds=2"])
    names = [m.name for m in spec.members("late", None, 5)]
    assert names == ["attention-seed5", "attention-seed6", "gated-seed5", "gated-seed6"]
    spec = parse_ensemble({"preset": ["fast"], "fusion": "late,gated"})
    assert [m.name for m in spec.members("attention", "medium", 0)] == [
        "fast-late-seed0",
        "fast-gated-seed0",
    ]
    assert parse_ensemble(None) is None


def test_a_modality_key_varies_its_encoder_and_round_trips():
    spec = parse_ensemble(["image=efficientnet-lite0,efficientnet-lite2", "fusion=late,gated"])
    plans = spec.members("attention", None, 0)
    assert [m.name for m in plans] == [
        "efficientnet-lite0-late-seed0",
        "efficientnet-lite0-gated-seed0",
        "efficientnet-lite2-late-seed0",
        "efficientnet-lite2-gated-seed0",
    ]
    assert plans[2].encoders == {"image": "efficientnet-lite2"} and plans[2].fusion == "late"
    assert parse_ensemble(spec.to_dict()).members("attention", None, 0) == plans
    # Two encoders alone are two members; a Hugging Face path becomes a folder-safe name.
    alone = parse_ensemble({"text": ["embedding-bag", "hf:org/model"]})
    assert [m.name for m in alone.members("late", None, 0)] == [
        "embedding-bag-late-seed0",
        "hf-org-model-late-seed0",
    ]


@pytest.mark.parametrize(
    "spec, says",
    [
        ("colour=red", "allowed keys: fusion, preset, seeds"),
        ("fusion", "allowed keys: fusion, preset, seeds"),
        ("fusion=attention,nope", "valid:"),
        ("seeds=zero", "seeds >= 1"),
        ("preset=huge", "fast, medium, best"),
        ("weights=best", "auto, selected, equal"),
        ("imag=cnn", "or a modality \\(image, audio, video, text\\)"),
        ("image=cnn,nope", "ensemble image \\['nope'\\] unknown; valid: cnn"),
        ("image=cnn,cnn", "repeats a value"),
    ],
)
def test_a_bad_spec_is_one_sentence_naming_the_fix(spec, says):
    with pytest.raises(ConfigError, match=says):
        parse_ensemble(spec)


def test_the_weighing_round_trips_and_auto_is_left_out():
    assert parse_ensemble(["seeds=2", "weights=equal"]).to_dict() == {
        "seeds": 2,
        "weights": "equal",
    }
    assert parse_ensemble("seeds=2").weights == "auto"
    assert "weights" not in parse_ensemble("seeds=2").to_dict()


def test_a_one_member_ensemble_is_refused():
    with pytest.raises(ConfigError, match="at least two"):
        parse_ensemble("seeds=1").members("attention", None, 0)


def test_monitor_names_map_to_selection_metrics():
    assert selection_metric(None) == "log_loss"
    assert selection_metric("val_accuracy") == "accuracy"
    assert selection_metric("val_loss") == "log_loss"
    with pytest.raises(ConfigError, match="log_loss, accuracy"):
        selection_metric("val_top_5")


# ---------------------------------------------------------------------------------- selection
def _noisy(y: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Probabilities that favour the true class, blurred by `noise`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, noise, (len(y), 4))
    logits[np.arange(len(y)), y] += 2.0
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def test_greedy_selection_weighs_the_better_member_and_beats_the_best_one():
    y = np.random.default_rng(0).integers(0, 4, 400)
    probas = {f"m{i}": {"t": _noisy(y, noise, i)} for i, noise in enumerate([1.5, 1.6, 6.0])}
    weights = greedy_weights(probas, {"t": y})
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["m0"] > weights["m2"] and weights["m1"] > 0  # two similar members share
    mix = sum(w * probas[m]["t"] for m, w in weights.items())
    best = min(score("log_loss", y, p["t"]) for p in probas.values())
    assert score("log_loss", y, mix) < best
    acc = greedy_weights(probas, {"t": y}, "accuracy")
    assert acc["m2"] < 0.5


# ---------------------------------------------------------------------------------- training
def _members(classes: list[str], epochs: int = 3) -> list[Member]:
    """Two members reading the image at different sizes, so each gets its own preprocessing."""
    first = tiny_model_config({"label": classes})
    second = tiny_model_config({"label": classes}, fusion=FusionConfig("late", 32))
    second.inputs["image"].options = {**second.inputs["image"].options, "image_size": 24}
    return [
        Member("attention-seed0", first, quick_config(epochs=epochs, seed=0)),
        Member("late-seed1", second, quick_config(epochs=epochs, seed=1)),
    ]


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """An ensemble killed in its second member's last epoch, then resumed."""
    root = tmp_path_factory.mktemp("ensemble")
    make_shapes(root / "train", 6, 3, seed=0)
    make_shapes(root / "val", 4, 3, seed=1)
    train, val = (read_manifest(root / s / "manifest.csv") for s in ("train", "val"))
    members = _members(train.classes["label"])
    seen: list[str] = []

    def kill(message: str) -> None:
        seen.append(message)
        if any(m.startswith("member 2/2") for m in seen) and message.startswith("epoch 3/3"):
            raise Killed  # before epoch 3's checkpoint is written

    with pytest.raises(Killed):
        train_ensemble(train, members, root / "run", val=val, log=kill)
    resumed: list[str] = []
    run = train_ensemble(train, members, root / "run", val=val, resume=True, log=resumed.append)
    return root, train, val, members, run, resumed


def test_a_killed_ensemble_resumes_at_the_member_and_epoch_reached(ensemble):
    root, train, val, members, run, log = ensemble
    assert any(line.startswith("member 1/2 attention-seed0: done before") for line in log)
    assert [r["epoch"] for r in run.histories["late-seed1"]] == [1, 2, 3]
    assert not any(line.startswith("epoch 1/3") for line in log)  # only epoch 3 trained again
    m = members[1]
    straight = train_model(train, m.model_config, m.train_config, root / "straight", val=val,
                           evaluate=False, log=lambda s: None)  # fmt: skip
    assert not state_dicts_equal(
        straight.model.state_dict(), run.model.members["late-seed1"].state_dict()
    )


def test_each_member_reads_its_own_preprocessing(ensemble):
    run = ensemble[4]
    assert run.model.names == ["audio", "image", "image@late-seed1", "text"]
    assert run.model.routes["late-seed1"]["image"] == "image@late-seed1"
    assert run.config.inputs["image@late-seed1"].column == "image"


def test_the_report_shows_members_weights_and_calibration(ensemble):
    root, *_, run, _ = ensemble
    saved = json.loads((root / "run" / "metrics.json").read_text())
    assert set(saved["members"]) == {"attention-seed0", "late-seed1"}
    assert sum(saved["weights"].values()) == pytest.approx(1.0)
    for metrics in [saved["metrics"], *saved["members"].values()]:
        assert {"accuracy", "log_loss", "ece", "ece_uncalibrated"} <= set(metrics)
    text = (root / "run" / "report.md").read_text()
    assert "## Ensemble" in text and "late-seed1" in text and "## Calibration" in text
    # 12 validation rows: too few to select weights on ("auto"), so the members weigh the same.
    assert run.validation["weighing"] == "equal" and "equal weights" in text
    assert saved["weights"] == pytest.approx({"attention-seed0": 0.5, "late-seed1": 0.5})


def test_uncalibrated_means_every_temperature_at_one(ensemble):
    """An ensemble's `ece_uncalibrated` is calibration off (its members' temperatures and its
    own at 1), rebuilt here from each member's calibrated probabilities."""
    from mmfuse.evaluate.calibration import expected_calibration_error, untempered
    from mmfuse.infer.engine import PredictOptions, predict_dataset
    from mmfuse.train.ensemble import ensemble_dataset

    _, _, val, *_ = ensemble
    run = ensemble[4]
    model = run.model
    temperatures = [model.temperatures(), *(m.temperatures() for m in model.members.values())]
    model.set_temperatures({"label": 1.7})  # make its own temperature matter
    data = ensemble_dataset(val, model, run.config, 0)
    result = evaluate_model(model, data, None, options=PredictOptions(), ablation=False)
    mixed, y = 0.0, None
    for name, member in model.members.items():
        out = predict_dataset(model.only(name), data, PredictOptions())
        p, y = out["proba"]["all"]["label"], out["labels"]["label"]
        mixed = mixed + model.weights[name] * untempered(p, member.temperatures()["label"])
    metrics = result["metrics"]
    assert metrics["ece_uncalibrated"] == pytest.approx(expected_calibration_error(y, mixed))
    ensemble_p = predict_dataset(model, data, PredictOptions())["proba"]["all"]["label"]
    assert metrics["ece_members_calibrated"] == pytest.approx(
        expected_calibration_error(y, untempered(ensemble_p, 1.7))
    )
    after = [model.temperatures(), *(m.temperatures() for m in model.members.values())]
    assert after[0] == {"label": pytest.approx(1.7)} and after[1:] == temperatures[1:]
    model.set_temperatures(temperatures[0])


def _as_classifier_folder(ensemble, tmp_path, weights=None):
    """The trained ensemble saved through MultimodalClassifier (weights overridable)."""
    *_, run, _ = ensemble
    if weights is not None:
        run.model.weights = weights
    clf = MultimodalClassifier(ensemble="seeds=2")
    clf._set_fitted(run.model, run.config, quick_config())
    return clf.save(tmp_path / "model")


def test_the_folder_holds_weighted_members_only_and_predicts_the_same(ensemble, tmp_path):
    root, run = ensemble[0], ensemble[4]
    folder = _as_classifier_folder(ensemble, tmp_path, {"attention-seed0": 0.0, "late-seed1": 1.0})
    assert sorted(p.name for p in (folder / "members").iterdir()) == ["late-seed1"]
    model, _, _ = load_model(folder)
    assert isinstance(model, EnsembleModel) and list(model.members) == ["late-seed1"]
    assert (folder / "members" / "late-seed1" / "model.safetensors").is_file()
    loaded = MultimodalClassifier.load(folder)
    data = root / "val" / "manifest.csv"
    before = MultimodalClassifier(ensemble="seeds=2")
    before._set_fitted(run.model, run.config, quick_config())
    np.testing.assert_allclose(loaded.predict_proba(data), before.predict_proba(data), atol=1e-6)
    assert loaded.get_params()["ensemble"] is None  # saved without a spec (set by hand here)
    assert set(loaded.evaluate(data)) >= {"ece", "ece_uncalibrated"}


def test_predictor_and_onnx_take_the_ensemble_folder(ensemble, tmp_path):
    from mmfuse.ship.onnx import export_onnx
    from mmfuse.ship.runtime import onnx_matches_torch

    root = ensemble[0]
    weights = {"attention-seed0": 0.4, "late-seed1": 0.6}
    folder = _as_classifier_folder(ensemble, tmp_path, weights)
    frame = read_manifest(root / "val" / "manifest.csv").frame.head(3)
    samples = [
        {"image": str(root / "val" / r.image), "audio": str(root / "val" / r.audio), "text": r.text}
        for r in frame.itertuples()
    ]
    samples[1]["image"] = None
    predictor = Predictor(folder)
    out = predictor.predict(samples)
    assert out[0].used == ["audio", "image", "image@late-seed1", "text"]
    assert out[1].used == ["audio", "text"]
    assert sum(out[0].probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    summary = export_onnx(folder, tmp_path / "ensemble.onnx")
    assert onnx_matches_torch(folder, summary["path"], samples) < 1e-4


def test_a_missing_member_folder_is_one_sentence(ensemble, tmp_path):
    import shutil

    folder = _as_classifier_folder(ensemble, tmp_path, {"attention-seed0": 0.5, "late-seed1": 0.5})
    shutil.rmtree(folder / "members" / "late-seed1")
    with pytest.raises(CheckpointError, match="member 'late-seed1' but its folder is gone"):
        load_model(folder)


def test_classifier_trains_an_ensemble_end_to_end(tmp_path):
    make_shapes(tmp_path / "train", 4, 3, seed=0)
    make_shapes(tmp_path / "val", 3, 3, seed=1)
    clf = tiny_classifier(tmp_path / "run", ensemble=["fusion=attention,late"], epochs=1)
    clf.fit(tmp_path / "train" / "manifest.csv", val=tmp_path / "val" / "manifest.csv")
    assert set(clf.weights_) == {"attention-seed0", "late-seed0"}
    assert clf.validation_["metric"] == "log_loss"
    assert set(clf.validation_["members"]) == set(clf.weights_)
    folder = clf.save(tmp_path / "model")
    again = MultimodalClassifier.load(folder)
    assert again.get_params()["ensemble"] == {"fusion": ["attention", "late"], "seeds": 1}
    data = tmp_path / "val" / "manifest.csv"
    np.testing.assert_allclose(again.predict_proba(data), clf.predict_proba(data), atol=1e-6)
    assert torch.isfinite(again.model_.temperature).all()


def test_members_that_differ_by_encoder_train_save_and_predict(tmp_path):
    make_shapes(tmp_path / "train", 4, 3, seed=0)
    make_shapes(tmp_path / "val", 3, 3, seed=1)
    clf = tiny_classifier(tmp_path / "run", ensemble={"image": ["cnn", "resnet-tiny"]})
    clf.fit(tmp_path / "train" / "manifest.csv", val=tmp_path / "val" / "manifest.csv")
    assert set(clf.weights_) == {"cnn-attention-seed0", "resnet-tiny-attention-seed0"}
    folder = clf.save(tmp_path / "model")
    read = {
        n: json.loads((folder / "members" / n / "config.json").read_text()) for n in clf.weights_
    }
    # Each member reads the image its own way, with the options its encoder takes.
    image = {n: c["model"]["inputs"]["image"] for n, c in read.items()}
    assert image["resnet-tiny-attention-seed0"]["encoder"] == "resnet-tiny"
    assert image["cnn-attention-seed0"]["encoder"] == "cnn"
    assert "stages" not in image["resnet-tiny-attention-seed0"]["options"]
    data = tmp_path / "val" / "manifest.csv"
    again = MultimodalClassifier.load(folder)
    np.testing.assert_allclose(again.predict_proba(data), clf.predict_proba(data), atol=1e-6)
