"""`mmfuse train`, `evaluate` and `predict` end to end on tiny shapes data, in-process."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmfuse.cli import main
from mmfuse.data.synthetic import make_shapes

TINY_IMAGE = '{"width": 8, "stages": 2, "image_size": 32}'
# Tiny audio/text encoders, no tensorboard, the feature cache in the test's folder.
TINY_CONFIG = {
    "fusion_dim": 16,
    "lr": 0.01,
    "encoders": {
        "audio": {
            "encoder": "mel-cnn",
            "options": {"width": 8, "stages": 2, "n_mels": 32, "duration": 0.25},
        },
        "text": {"encoder": "embedding-bag", "options": {"dim": 16, "vocab_size": 1024}},
    },
    "train_options": {"tensorboard": False},
}


def run(argv: list[str]) -> tuple[int, str, str]:
    """`main(argv)` with its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def train_args(root: Path, out: Path, *extra) -> list:
    return [
        "train",
        root / "train" / "manifest.csv",
        "--val",
        root / "val" / "manifest.csv",
        "--config",
        root / "config.json",
        "--encoder",
        "image=cnn",
        "--encoder-options",
        f"image={TINY_IMAGE}",
        "--freeze",
        "text",
        "--epochs",
        2,
        "--batch-size",
        4,
        "--device",
        "cpu",
        "--out",
        out,
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_shapes(root / "train", 4, 3, seed=0)
    make_shapes(root / "val", 2, 3, seed=1)
    config = {**TINY_CONFIG, "cache_dir": str(root / "cache")}  # a flat TrainConfig field
    (root / "config.json").write_text(json.dumps(config))
    code, out, err = run(train_args(root, root / "run"))
    assert code == 0, err
    return root, root / "run", out


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_train_writes_the_model_folder(trained):
    root, model_dir, out = trained
    assert "12 rows" in out and "6 rows" in out  # the data summaries come first
    assert out.index("12 rows") < out.index("accuracy")
    assert "accuracy" in out and f"model folder: {model_dir}" in out
    for name in ("config.json", "labels.json", "model.safetensors", "metrics.json", "report.md"):
        assert (model_dir / name).is_file(), name
    assert list(model_dir.glob("*.png")) and list(model_dir.glob("ckpt-*"))

    saved = json.loads((model_dir / "config.json").read_text())
    inputs = saved["model"]["inputs"]
    assert inputs["image"]["encoder"] == "cnn" and inputs["image"]["options"]["width"] == 8
    assert inputs["text"]["mode"] == "freeze" and inputs["audio"]["options"]["width"] == 8
    assert saved["model"]["fusion"]["dim"] == 16  # from --config
    assert saved["train"]["epochs"] == 2 and saved["train"]["lr"] == 0.01  # flag and file
    assert saved["train"]["cache_dir"] == str(root / "cache")


def test_train_refuses_to_overwrite_a_run_and_resumes(trained, tmp_path):
    root, model_dir, _ = trained
    code, _, err = run(train_args(root, model_dir))
    assert code == 2 and "--resume" in one_error_line(err)

    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy)
    code, out, err = run(train_args(root, copy, "--resume", "--epochs", 3))
    assert code == 0, err
    assert "resumed from" in out and "epoch 3/3" in out


def test_evaluate_prints_the_table_and_writes_the_report(trained):
    root, model_dir, _ = trained
    code, out, err = run(["evaluate", model_dir, root / "val" / "manifest.csv"])
    assert code == 0, err
    assert "accuracy" in out and "samples: 6" in out
    assert (model_dir / "eval-manifest" / "report.md").is_file()


def test_predict_a_manifest_to_csv(trained, tmp_path):
    root, model_dir, _ = trained
    val = root / "val" / "manifest.csv"
    code, _, err = run(["predict", model_dir, val, "--out", tmp_path / "p.csv", "--proba"])
    assert code == 0, err
    preds = pd.read_csv(tmp_path / "p.csv")
    classes = json.loads((model_dir / "labels.json").read_text())["label"]
    assert len(preds) == len(pd.read_csv(val))
    assert list(preds.columns) == [
        "row",
        "image",
        "audio",
        "text",
        "prediction",
        "error",
        *(f"proba_{c}" for c in classes),
    ]
    proba = preds[[f"proba_{c}" for c in classes]].to_numpy()
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert set(preds["prediction"]) <= set(classes)

    code, out, _ = run(["predict", model_dir, val])  # no --out: the CSV on stdout
    assert code == 0
    printed = pd.read_csv(io.StringIO(out))
    assert list(printed.columns) == ["row", "image", "audio", "text", "prediction"]
    assert printed["prediction"].tolist() == preds["prediction"].tolist()


def test_predict_one_sample_with_missing_modalities(trained, tmp_path):
    root, model_dir, _ = trained
    classes = json.loads((model_dir / "labels.json").read_text())["label"]
    image = next((root / "val").glob("*.png"))
    code, out, err = run(["predict", model_dir, "--image", image])
    assert code == 0, err
    label, *rows = out.splitlines()
    assert label in classes and len(rows) == len(classes)
    assert sum(float(r.split()[-1]) for r in rows) == pytest.approx(1.0, abs=1e-3)

    code, out, err = run(["predict", model_dir, "--text", "a red square", "--image", image])
    assert code == 0 and out.splitlines()[0] in classes, err


def test_predict_an_unreadable_file_exits_1(trained, tmp_path):
    _, model_dir, _ = trained
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    code, out, err = run(["predict", model_dir, "--image", bad])
    assert code == 1 and out == ""
    line = one_error_line(err)
    assert str(bad) in line and "--image" in line
    code, _, err = run(["predict", model_dir, "--image", tmp_path / "absent.png"])
    assert code == 1 and "absent.png" in one_error_line(err)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "{train}", "--epochs", "x"], "invalid int value"),
        (["train", "{train}", "--fusion", "nope"], "attention"),
        (["train", "{train}", "--encoder", "image"], "COLUMN=VALUE"),
        (["train", "{train}", "--encoder-options", "image=[1]"], "JSON object"),
        (["train", "{train}", "--config", "{bad_config}"], "unknown key 'epoch'"),
        (["train", "{train}", "--device", "gpu"], "cuda"),
        (["train", "{train}", "--label", "nope"], "nope"),
        (["train", "{train}", "--out", "{tmp}/x", "--encoder", "image=nope"], "resnet18"),
        (["evaluate", "{model}"], "required"),
        (["predict", "{tmp}", "{val}"], "not an mmfuse model folder"),
        (["predict", "{model}"], "nothing to predict"),
        (["predict", "{model}", "--video", "clip.mp4"], "no video input"),
        (["predict", "{model}", "{val}", "--image", "x.png"], "not both"),
    ],
)
def test_usage_errors_exit_2_on_one_line(trained, tmp_path, argv, needle):
    root, model_dir, _ = trained
    (tmp_path / "bad.json").write_text(json.dumps({"epoch": 3}))
    paths = {
        "train": root / "train" / "manifest.csv",
        "val": root / "val" / "manifest.csv",
        "model": model_dir,
        "tmp": tmp_path,
        "bad_config": tmp_path / "bad.json",
    }
    code, _, err = run([a.format(**paths) for a in argv])
    assert code == 2
    assert needle in one_error_line(err)


COMMANDS = [
    ["validate"],
    ["train"],
    ["evaluate"],
    ["predict"],
    ["datasets"],
    ["datasets", "make"],
    ["datasets", "make", "avdigits"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_examples(command):
    code, out, _ = run([*command, "--help"])
    assert code == 0 and "examples:" in out


def test_console_script_help():
    script = Path(sys.executable).with_name("mmfuse")
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "mmfuse"]
    done = subprocess.run([*argv, "train", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "examples:" in done.stdout and "--encoder-options" in done.stdout
    done = subprocess.run([*argv, "train"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
