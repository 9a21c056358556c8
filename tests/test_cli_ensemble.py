"""`mmfuse train --ensemble` and the commands that take its folder (evaluate, predict, export)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mmfuse.data.synthetic import make_shapes
from test_cli_train import TINY_CONFIG, one_error_line, run, train_args


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-ensemble")
    make_shapes(root / "train", 4, 3, seed=0)
    make_shapes(root / "val", 2, 3, seed=1)
    (root / "config.json").write_text(json.dumps(TINY_CONFIG))
    # 6 validation rows: without weights=selected the members would simply weigh the same.
    argv = train_args(root, root / "run", "--ensemble", "fusion=attention,late",
                      "--ensemble", "weights=selected", "--monitor", "accuracy")  # fmt: skip
    code, out, err = run(argv)
    assert code == 0, err
    return root, root / "run", out


def test_train_prints_members_and_writes_one_folder(trained):
    _, model_dir, out = trained
    assert "attention-seed0" in out and "late-seed0" in out and "ensemble" in out
    saved = json.loads((model_dir / "config.json").read_text())
    weights = saved["ensemble"]["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    for name in weights:
        assert (model_dir / "members" / name / "model.safetensors").is_file()
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics["members"]) == {"attention-seed0", "late-seed0"}
    assert "ece" in metrics["metrics"] and "ece_uncalibrated" in metrics["metrics"]
    assert saved["train"]["monitor"] == "val_accuracy"
    assert saved["ensemble"]["spec"]["weights"] == "selected" and "bagged selection" in out


def test_evaluate_predict_and_export_take_the_ensemble(trained, tmp_path):
    root, model_dir, _ = trained
    val = root / "val" / "manifest.csv"
    code, out, err = run(["evaluate", model_dir, val, "--out", tmp_path / "eval"])
    assert code == 0, err
    assert "ece" in out and "ece uncalibrated" in out
    assert "members" in json.loads((tmp_path / "eval" / "metrics.json").read_text())
    code, _, err = run(["predict", model_dir, val, "--out", tmp_path / "p.csv", "--proba"])
    assert code == 0, err
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 6 and table["prediction"].notna().all()
    code, _, err = run(["export", model_dir, "--out", tmp_path / "m.onnx"])
    assert code == 0, err
    assert (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--ensemble", "size=3"], "allowed keys: fusion, preset, seeds"),
        (["--ensemble", "seeds=1"], "at least two"),
        (["--ensemble", "seeds=2", "--monitor", "top_5"], "log_loss, accuracy"),
        (["--ensemble", "folds=1"], "folds >= 2"),
        (["--ensemble", "weights=best"], "auto, selected, equal"),
    ],
)
def test_a_bad_ensemble_flag_is_a_usage_error(trained, tmp_path, flags, says):
    root = trained[0]
    code, _, err = run(train_args(root, tmp_path / "out", *flags))
    assert code == 2 and says in one_error_line(err)


def test_an_ensemble_run_is_not_overwritten_without_resume(trained):
    root, model_dir, _ = trained
    code, _, err = run(train_args(root, model_dir, "--ensemble", "seeds=2"))
    assert code == 2 and "--resume" in one_error_line(err)


def test_folds_bag_each_member_and_report_out_of_fold(trained, tmp_path):
    root = trained[0]
    out_dir = tmp_path / "bagged"
    code, out, err = run(train_args(root, out_dir, "--ensemble", "folds=2"))
    assert code == 0, err
    assert "2-fold bagging over 18 rows" in out and "fold1/2: training" in out
    assert "scores out of fold" in out
    saved = json.loads((out_dir / "config.json").read_text())
    assert saved["ensemble"]["spec"] == {"seeds": 1, "folds": 2}
    bag = out_dir / "members" / "attention-seed0"
    assert json.loads((bag / "config.json").read_text())["ensemble"]["members"] == [
        "fold0",
        "fold1",
    ]
    assert "out-of-fold" in (out_dir / "report.md").read_text()
    code, _, err = run(
        ["predict", out_dir, root / "val" / "manifest.csv", "--out", tmp_path / "p.csv"]
    )
    assert code == 0, err


def test_groups_name_an_ignored_column_that_keeps_rows_together(trained, tmp_path):
    import shutil

    root = trained[0]
    grouped = tmp_path / "grouped"
    for split in ("train", "val"):
        shutil.copytree(root / split, grouped / split)
        table = pd.read_csv(grouped / split / "manifest.csv")
        table["take"] = [f"{split}-{i // 2}" for i in range(len(table))]
        table.to_csv(grouped / split / "manifest.csv", index=False)
    shutil.copy(root / "config.json", grouped / "config.json")
    flags = ["--ensemble", "folds=2", "--ensemble", "groups=take", "--modality", "take=ignore"]
    code, _, err = run(train_args(grouped, tmp_path / "out", *flags))
    assert code == 0, err
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["ensemble"]["spec"]["groups"] == "take"
    assert "take" not in saved["model"]["inputs"]
    code, _, err = run(train_args(grouped, tmp_path / "out2", "--ensemble", "folds=2",
                                  "--ensemble", "groups=speaker"))  # fmt: skip
    assert code == 2 and "no such column" in one_error_line(err)
