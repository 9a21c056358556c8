"""ONNX export (fp32 and int8), pruning, and the before/after report, on a tiny trained model."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from mmfuse.classifier import MultimodalClassifier
from mmfuse.cli import compress as compress_cli
from mmfuse.cli import export as export_cli
from mmfuse.data.manifest import read_manifest
from mmfuse.data.synthetic import make_shapes
from mmfuse.model.saved import load_model
from mmfuse.ship.measure import EvalData, export_report, format_report, onnx_runner
from mmfuse.ship.onnx import export_onnx
from mmfuse.ship.prune import CompressError, prunable_weights, prune_model, recalibrate_batchnorm
from mmfuse.ship.runtime import onnx_matches_torch
from mmfuse.ship.sidecar import ExportError, read_sidecar
from train_helpers import make_dataset, tiny_classifier


def fit_and_save(root, fusion: str = "attention", epochs: int = 2):
    clf = tiny_classifier(
        root / f"run-{fusion}", fusion=fusion, epochs=epochs, lr=1e-2, fusion_dim=32
    )
    clf.fit(root / "data" / "manifest.csv")
    return clf.save(root / f"model-{fusion}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    make_shapes(root / "data", 6, 3, seed=0)
    model_dir = fit_and_save(root)
    return root, model_dir


@pytest.fixture(scope="module")
def exported(trained):
    root, model_dir = trained
    return export_onnx(model_dir, root / "model.onnx")


def real_samples(root, n: int) -> list[dict]:
    """`n` manifest rows as Predictor requests; rows 1-4 each miss some input."""
    frame = pd.read_csv(root / "data" / "manifest.csv").head(n)
    samples = [
        {
            "image": str(root / "data" / r.image),
            "audio": str(root / "data" / r.audio),
            "text": r.text,
        }
        for r in frame.itertuples()
    ]
    missing = [("image",), ("audio",), ("text",), ("image", "text")]
    for sample, absent in zip(samples[1:], missing):
        for name in absent:
            sample[name] = None
    return samples


@pytest.mark.parametrize("batch", [5, 1])
def test_onnx_matches_torch_on_real_files(trained, exported, batch):
    root, model_dir = trained
    samples = real_samples(root, 5)
    if batch == 1:
        samples = samples[4:]  # the row with only audio present
    assert onnx_matches_torch(model_dir, exported["path"], samples) < 1e-4


def test_graph_inputs_outputs_and_dynamic_batch(exported):
    session = ort.InferenceSession(exported["path"], providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == ["audio", "image", "text.input_ids", "text.attention_mask", "mask"]
    assert inputs["image"].shape == ["batch", 3, 32, 32]
    assert inputs["text.input_ids"].shape == ["batch", "text_length"]
    assert inputs["text.input_ids"].type == "tensor(int64)"
    assert inputs["mask"].type == "tensor(bool)"
    assert [o.name for o in session.get_outputs()] == ["proba_label"]
    assert exported["outputs"] == ["proba_label"]
    assert exported["size"] > 0


def test_sidecar_describes_the_graph(trained, exported):
    _, model_dir = trained
    sidecar = read_sidecar(exported["path"])
    labels = json.loads((model_dir / "labels.json").read_text())
    assert sidecar["labels"] == labels
    assert sidecar["mask"] == {
        "name": "mask",
        "dtype": "bool",
        "columns": ["audio", "image", "text"],
    }
    by_name = {i["name"]: i for i in sidecar["inputs"]}
    assert by_name["image"] == {
        "name": "image",
        "input": "image",
        "modality": "image",
        "shape": [3, 32, 32],
        "dtype": "float32",
    }
    assert by_name["audio"]["shape"][0] == 32  # n_mels × frames
    assert by_name["text.attention_mask"]["dtype"] == "int64"
    assert sidecar["outputs"] == [
        {"name": "proba_label", "task": "label", "classes": labels["label"]}
    ]
    assert sidecar["preprocessing"]["text"]["spec"]["tokenizer"] == "hash"


def test_int8_is_smaller_and_mostly_agrees(trained, exported):
    root, model_dir = trained
    summary = export_onnx(model_dir, root / "model.int8.onnx", quantize="int8")
    assert summary["size"] < exported["size"]
    quantized = summary["quantized_ops"]
    assert quantized["MatMul (Linear layers, incl. the Gemms rewritten)"] > 0
    assert quantized["Gather (embedding tables)"] == 1
    assert read_sidecar(summary["path"])["quantize"] == "int8"
    samples = real_samples(root, 18)
    assert onnx_matches_torch(model_dir, summary["path"], samples) < 0.1
    data = EvalData(model_dir, root / "data" / "manifest.csv")
    fp32 = onnx_runner(exported["path"], data.tokenizers)
    int8 = onnx_runner(summary["path"], data.tokenizers)
    agree = [
        (fp32(b)["label"].argmax(1) == int8(b)["label"].argmax(1)).mean() for b in data.batches
    ]
    assert np.mean(agree) >= 0.8


@pytest.mark.parametrize("fusion", ["transformer", "late"])
def test_token_and_decision_level_fusions_export(trained, fusion):
    root, _ = trained
    model_dir = fit_and_save(root, fusion, epochs=1)
    summary = export_onnx(model_dir, root / f"{fusion}.onnx")
    assert onnx_matches_torch(model_dir, summary["path"], real_samples(root, 5)) < 1e-4


def test_export_failure_names_the_fusion(trained, monkeypatch, tmp_path):
    _, model_dir = trained

    def fail(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator foo")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(ExportError, match=r"fusion 'attention'.*operator foo"):
        export_onnx(model_dir, tmp_path / "m.onnx")


def test_unknown_quantize_mode_names_the_flag(trained, tmp_path):
    with pytest.raises(ExportError, match="--quantize int8"):
        export_onnx(trained[1], tmp_path / "m.onnx", quantize="int4")


def test_prune_finetune_save_and_load(trained, tmp_path):
    root, model_dir = trained
    manifest = root / "data" / "manifest.csv"
    summary = prune_model(
        model_dir, tmp_path / "pruned", 0.5, finetune_manifest=manifest, epochs=1, log=print
    )
    assert summary["sparsity"] >= 0.45
    assert len(summary["finetune"]["history"]) == 1
    model, _, _ = load_model(tmp_path / "pruned")  # plain weights again: no masks left
    layers = prunable_weights(model)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    assert zeros / sum(m.weight.numel() for _, m in layers) >= 0.45
    assert json.loads((tmp_path / "pruned" / "compression.json").read_text())["amount"] == 0.5
    clf = MultimodalClassifier.load(tmp_path / "pruned")
    predictions = clf.predict(manifest)
    assert len(predictions) == 18 and set(predictions) <= set(clf.classes_)


def test_prune_layer_scope_and_bad_amount(trained, tmp_path):
    _, model_dir = trained
    summary = prune_model(model_dir, tmp_path / "p", 0.3, scope="layer", log=lambda m: None)
    assert all(abs(s - 0.3) < 0.02 for s in summary["per_layer"].values())
    assert summary["finetune"] is None
    with pytest.raises(CompressError, match="--prune"):
        prune_model(model_dir, tmp_path / "q", 1.5)
    with pytest.raises(CompressError, match="original model is kept"):
        prune_model(model_dir, model_dir, 0.5)


def test_report_table_before_and_after(trained, exported):
    root, model_dir = trained
    manifest = root / "data" / "manifest.csv"
    rows = export_report(model_dir, [("onnx fp32", exported["path"])], manifest, repeats=2)
    assert [r.name for r in rows] == ["torch", "onnx fp32"]
    assert rows[0].accuracy == rows[1].accuracy  # the same predictions
    assert all(r.latency_1 > 0 and r.latency_32 > 0 for r in rows)
    table = format_report(rows)
    header = table.splitlines()[0]
    for column in ("size MB", "ms/sample b=1", "ms/sample b=32", "accuracy"):
        assert column in header
    assert "onnx fp32 vs torch: size ×" in table


def run_cli(add, command, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add(parser)
    return command(parser.parse_args(argv))


def test_export_command_prints_the_table(trained, capsys):
    root, model_dir = trained
    out = root / "cli.int8.onnx"
    argv = [str(model_dir), "--out", str(out), "--quantize", "int8"]
    argv += ["--manifest", str(root / "data" / "manifest.csv"), "--repeats", "2"]
    assert run_cli(export_cli.add_arguments, export_cli.run, argv) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and (root / "cli.int8.onnx.json").is_file()
    for row in ("torch ", "onnx fp32 ", "onnx int8 ", "ms/sample b=32"):
        assert row in printed


def test_compress_command_prints_the_table(trained, tmp_path, capsys):
    root, model_dir = trained
    manifest = str(root / "data" / "manifest.csv")
    argv = [str(model_dir), "--prune", "0.5", "--out", str(tmp_path / "p"), "--eval", manifest]
    argv += ["--repeats", "2"]
    assert run_cli(compress_cli.add_arguments, compress_cli.run, argv) == 0
    printed = capsys.readouterr().out
    assert "pruning without fine-tuning" in printed
    for column in ("original ", "pruned ", "gzip MB", "accuracy"):
        assert column in printed


def test_batchnorm_recalibration_skips_frozen_encoders(trained):
    root, model_dir = trained
    model, config, _ = load_model(model_dir)
    model.encoders["image"].freeze()
    norms = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for m in norms.values():
        m.running_mean.fill_(100.0)
    manifest = read_manifest(root / "data" / "manifest.csv", label="label")
    dataset = make_dataset(manifest, config, model, train=False)
    assert recalibrate_batchnorm(model, dataset, batch_size=8) > 0
    for name, m in norms.items():
        stale = bool((m.running_mean == 100.0).all())
        assert stale == name.startswith("encoders.image."), name
        assert m.momentum == 0.1
    assert not model.training


def test_compress_flags_refuse_a_bad_amount(capsys):
    parser = argparse.ArgumentParser()
    compress_cli.add_arguments(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["m", "--prune", "50", "--out", "o"])
    assert exit_info.value.code == 2
    assert "not a fraction in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("grid", [0, 3])
def test_efficientnet_stage_and_grid_features_export(trained, tmp_path, grid):
    """The `medium` preset's image encoder: its stage maps are pooled onto the head's grid, and
    `grid` lays the early ones on cells (7 into 3 overlap): both must be in the graph."""
    from mmfuse.model import FusionConfig, HeadConfig, InputConfig, ModelConfig, MultimodalModel
    from mmfuse.model.saved import save_model

    root, _ = trained
    options = {"features": "stages", "grid": grid, "image_size": 224}  # a 7 × 7 head grid
    config = ModelConfig(
        inputs={"image": InputConfig("image", "image", "efficientnet-lite-tiny", options)},
        heads=[HeadConfig("label", ["a", "b", "c"])],
        fusion=FusionConfig("attention", dim=8),
    )
    save_model(tmp_path / "model", MultimodalModel.from_config(config).eval(), config)
    exported = export_onnx(tmp_path / "model", tmp_path / "model.onnx")
    frame = pd.read_csv(root / "data" / "manifest.csv").head(3)
    samples = [{"image": str(root / "data" / image)} for image in frame["image"]]
    assert onnx_matches_torch(tmp_path / "model", exported["path"], samples) < 1e-4


def test_standardised_inputs_export_with_their_statistics(trained):
    """A frozen input standardised by training statistics (the pretrained presets'): the
    statistics are buffers, so the graph carries them, and absent rows stay absent."""
    from train_helpers import SMALL_ENCODERS

    root, _ = trained
    image = {**SMALL_ENCODERS["image"], "mode": "freeze", "standardize": True}
    clf = tiny_classifier(
        root / "run-scaled", encoders={**SMALL_ENCODERS, "image": image}, epochs=1,
        lr=1e-2, fusion_dim=32,
    )  # fmt: skip
    clf.fit(root / "data" / "manifest.csv")
    model_dir = clf.save(root / "model-scaled")
    model, _, _ = load_model(model_dir)
    assert model.scalers["image"].fitted
    summary = export_onnx(model_dir, root / "scaled.onnx")
    assert onnx_matches_torch(model_dir, summary["path"], real_samples(root, 5)) < 1e-4
