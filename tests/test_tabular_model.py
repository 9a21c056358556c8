"""Numbers and categories through the model: training-split statistics, the unknown category,
save/load, every fusion method with missing values, embeddings (API and `mmfuse embed`), the
"without tabular" ablation, robustness noise on numbers and ONNX parity."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mmfuse import fusion as fusion_registry
from mmfuse.classifier import MultimodalClassifier
from mmfuse.cli import main
from mmfuse.data import read_manifest
from mmfuse.evaluate.ablation import ablation_variants
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.model import FusionConfig, HeadConfig, InputConfig, ModelConfig, MultimodalModel
from mmfuse.ship.onnx import export_onnx
from mmfuse.ship.runtime import onnx_matches_torch
from train_helpers import tiny_classifier

ENCODERS = {
    "numeric": {"encoder": "mlp", "options": {"dim": 8}},
    "categorical": {"encoder": "embedding", "options": {"dim": 8}},
    "text": {"encoder": "embedding-bag", "options": {"dim": 8, "vocab_size": 256}},
}
COLORS = np.array(["red", "green", "blue"])


def table(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """x (numeric, mean 100 + shift) and color both tell the class; some cells are missing."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    frame = pd.DataFrame(
        {
            "x": 100 + shift + 3 * y + rng.normal(0, 1, n),
            "color": COLORS[np.where(rng.random(n) < 0.8, y, rng.integers(0, 3, n))],
            "words": [f"sample {k}" for k in rng.integers(0, 5, n)],
            "label": y,
        }
    )
    frame.loc[::7, "x"] = np.nan
    frame.loc[3::9, "color"] = None
    return frame


ROLES = {"x": "numeric", "color": "categorical", "words": "text"}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabular")
    clf = tiny_classifier(
        root / "run", encoders=ENCODERS, epochs=8, batch_size=16, lr=1e-2, fusion="gated"
    )
    clf.fit(read_manifest(table(120, 0), modalities=ROLES))
    clf.save(root / "model")
    return clf, root


def test_standardisation_uses_the_training_split_only(fitted):
    clf, _ = fitted
    train = table(120, 0)
    spec = clf.model_.encoders["x"].input_spec
    assert spec.mean == pytest.approx(train["x"].mean(), rel=1e-3)
    assert spec.std == pytest.approx(train["x"].std(ddof=0), rel=1e-3)
    shifted = table(30, 1, shift=500.0)  # a test split with another mean
    clf.predict(shifted)
    clf.evaluate(shifted, ablation=False)
    assert clf.model_.encoders["x"].input_spec.mean == spec.mean
    dataset = clf._dataset(shifted)
    row = int(np.flatnonzero(shifted["x"].notna())[0])
    loaded = dataset[row]["inputs"]["x"]
    expected = (shifted["x"][row] - spec.mean) / spec.std
    assert float(loaded[0]) == pytest.approx(expected, rel=1e-5)


def test_unseen_categories_map_to_unknown(fitted):
    clf, _ = fitted
    encoder = clf.model_.encoders["color"]
    assert encoder.input_spec.categories == ("blue", "green", "red")
    frame = table(4, 2)
    frame["color"] = ["purple", "red", "teal", "blue"]
    dataset = clf._dataset(frame)
    index = [float(dataset[r]["inputs"]["color"][0]) for r in range(4)]
    assert index == [0.0, 3.0, 0.0, 1.0]  # 0 is unknown
    encoder.eval()
    with torch.no_grad():
        out = encoder(torch.tensor([[0.0], [3.0]]))
    torch.testing.assert_close(out[0], encoder.embedding.weight[0])
    assert np.isfinite(clf.predict_proba(frame)).all()


def test_saved_model_keeps_statistics_and_predicts_the_same(fitted):
    clf, root = fitted
    saved = json.loads((root / "model" / "config.json").read_text())
    options = saved["model"]["inputs"]["x"]["options"]
    assert options["mean"] == clf.model_.encoders["x"].input_spec.mean
    assert saved["model"]["inputs"]["color"]["options"]["categories"] == ["blue", "green", "red"]
    assert not list((root / "model").glob("*.pkl"))
    loaded = MultimodalClassifier.load(root / "model")
    test = table(30, 3, shift=50.0)
    np.testing.assert_allclose(loaded.predict_proba(test), clf.predict_proba(test), atol=1e-6)


def test_fused_embeddings_are_what_the_heads_take(fitted):
    clf, _ = fitted
    test = table(25, 4)
    test.loc[5, ["x", "color"]] = None  # a row with only its text
    emb = clf.embed(test)
    assert list(emb.columns) == [f"fused_{i}" for i in range(16)] and len(emb) == 25
    fused = torch.tensor(emb.to_numpy(), dtype=torch.float32)
    with torch.no_grad():
        proba = clf.model_.heads[clf.task_](fused).softmax(-1).numpy()
    np.testing.assert_allclose(proba, clf.predict_proba(test), atol=1e-5)


def test_input_embeddings_are_zero_where_absent_and_flag_presence(fitted):
    clf, _ = fitted
    test = table(14, 5)
    emb = clf.embed(test, level="inputs")
    assert {"x_0", "x_7", "color_0", "words_7", "x_present"} <= set(emb.columns)
    absent = test["x"].isna().to_numpy()
    assert (emb["x_present"].to_numpy() == ~absent).all()
    assert (emb.loc[absent, [f"x_{i}" for i in range(8)]].to_numpy() == 0).all()
    row = int(np.flatnonzero(~absent)[0])
    value = clf._dataset(test)[row]["inputs"]["x"].unsqueeze(0)
    with torch.no_grad():
        expected = clf.model_.encoders["x"](value)[0].numpy()
    np.testing.assert_allclose(emb.loc[row, [f"x_{i}" for i in range(8)]], expected, atol=1e-6)


def test_mmfuse_embed_streams_the_same_rows(fitted, tmp_path, capsys):
    clf, root = fitted
    test = table(11, 6)
    test.to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "emb.parquet"
    code = main(["embed", str(root / "model"), str(tmp_path / "test.csv"), "--out", str(out)])
    assert code == 0
    got = pd.read_parquet(out)
    assert list(got["row"]) == list(range(11)) and got["error"].isna().all()
    expected = clf.embed(read_manifest(tmp_path / "test.csv", modalities=ROLES))
    np.testing.assert_allclose(got[expected.columns].to_numpy(), expected.to_numpy(), atol=1e-5)
    code = main(["embed", str(root / "model"), str(tmp_path / "test.csv"), "--out", str(out),
                 "--level", "nope"])  # fmt: skip
    assert code == 2


def test_ablation_has_a_without_tabular_variant():
    variants = ablation_variants(
        ["color", "image", "x"], {"color": "categorical", "image": "image", "x": "numeric"}
    )
    assert variants["without tabular"] == {"color": False, "image": True, "x": False}
    assert variants["tabular only"] == {"color": True, "image": False, "x": True}
    assert "without tabular" not in ablation_variants(["a", "b"], {"a": "image", "b": "text"})


def test_evaluation_reports_ablation_and_noise_on_numbers(fitted):
    clf, _ = fitted
    clf.evaluate(table(40, 7), robustness=True)
    result = clf.last_evaluation_
    assert "without tabular" in result["ablation"]
    curve = result["robustness"]["x"]
    assert curve["corruption"] == "gaussian noise" and len(curve["accuracy"]) > 2
    assert "color" not in result["robustness"]


@pytest.mark.parametrize("method", fusion_registry.available())
def test_every_fusion_method_takes_tabular_inputs_with_missing_values(method):
    config = ModelConfig(
        inputs={
            "x": InputConfig("x", "numeric", "mlp", {"mean": 1.0, "std": 2.0, "dim": 8}),
            "c": InputConfig("c", "categorical", "embedding", {"categories": ["a"], "dim": 8}),
        },
        heads=[HeadConfig("label", ["0", "1"])],
        fusion=FusionConfig(method, dim=8),
    )
    torch.manual_seed(0)
    model = MultimodalModel.from_config(config)
    frame = pd.DataFrame({"x": [1.0, None, 3.0], "c": ["a", "b", None], "label": [0, 1, 0]})
    manifest = read_manifest(frame, modalities={"x": "numeric", "c": "categorical"})
    specs = {n: model.encoders[n].input_spec for n in model.names}
    data = MultimodalDataset(manifest, config.inputs, specs, {"label": ["0", "1"]})
    items = [data[i] for i in range(3)]
    inputs = {n: torch.stack([i["inputs"][n] for i in items]) for n in model.names}
    mask = torch.tensor([[i["present"][n] for n in model.names] for i in items])
    assert mask.tolist() == [[True, True], [True, False], [False, True]]  # c, x
    logits = model(inputs, mask)["label"]
    logits.sum().backward()
    assert torch.isfinite(logits).all()


def test_onnx_export_matches_torch_with_tabular_inputs(fitted, tmp_path):
    _, root = fitted
    summary = export_onnx(root / "model", tmp_path / "model.onnx")
    samples = [
        {"x": 101.5, "color": "red", "words": "sample 1"},
        {"x": 97.0, "color": "purple"},  # an unknown category, no text
        {"color": "blue", "words": "sample 3"},  # no number
        {"x": 105.0},
    ]
    assert onnx_matches_torch(root / "model", summary["path"], samples) < 1e-4
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["preprocessing"]["x"]["spec"]["mean"] > 90  # a consumer can standardise


def test_service_takes_numbers_and_categories_as_form_fields(fitted):
    from fastapi.testclient import TestClient

    from mmfuse.serve.app import create_app

    clf, root = fitted
    with TestClient(create_app(root / "model")) as client:
        fields = {"x": "101.5", "color": "red", "words": "sample 2"}
        answer = client.post("/predict", files={k: (None, v) for k, v in fields.items()})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        frame = pd.DataFrame([{**fields, "x": 101.5}])
        expected = clf.predict_proba(read_manifest(frame, modalities=ROLES))[0]
        got = [body["probabilities"][c] for c in clf.classes_]
        np.testing.assert_allclose(got, expected, atol=1e-5)
        only = client.post("/predict", files={"color": (None, "green")})
        assert only.status_code == 200 and only.json()["modalities_used"] == ["color"]
        bad = client.post("/predict", files={"x": (None, "lots"), "color": (None, "red")})
        assert bad.status_code == 422
        error = bad.json()["error"]
        assert error["reason"] == "bad-value" and error["field"] == "x"
        assert "'lots' is not a number" in error["message"]
        schema = client.get("/openapi.json").json()
        assert '{"type": "number", "description": "x (a number)"}' in json.dumps(schema)
