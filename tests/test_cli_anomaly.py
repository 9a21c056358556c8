"""`mmfuse datasets make surveillance` and `mmfuse anomaly fit/score/evaluate` end to end, in
process, on a tiny generated set read by tiny random encoders."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest

from anomaly_helpers import TINY_ENCODERS
from mmfuse.cli import main

TINY = json.dumps(TINY_ENCODERS)


def run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", autouse=True)
def feature_cache(tmp_path_factory):
    """The feature cache in a test folder, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMFUSE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("surv")
    code, out, err = run(["datasets", "make", "surveillance", root, "--samples", "24"])
    assert code == 0, err
    assert "next: mmfuse anomaly fit" in out
    return root


@pytest.fixture(scope="module")
def detector(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "det"
    argv = ["anomaly", "fit", data / "train.csv", "--val", data / "val.csv", "--out", out]
    code, stdout, err = run([*argv, "--encoders", TINY, "--false-alarm", "0.2", "--quiet"])
    assert code == 0, err
    assert "threshold" in stdout
    return out


def test_fit_score_evaluate(data, detector, tmp_path):
    scores = tmp_path / "scores.csv"
    code, _, err = run(["anomaly", "score", detector, data / "test.csv", "--out", scores])
    assert code == 0, err
    table = pd.read_csv(scores)
    expected = ["video", "label", "kind", "score", "anomaly"]
    assert list(table.columns) == [*expected, "score_video", "score_video_audio", "error"]
    assert len(table) == len(pd.read_csv(data / "test.csv"))
    code, out, err = run(["anomaly", "evaluate", detector, data / "test.csv", "--out", tmp_path])
    assert code == 0, err
    assert "ROC-AUC" in out and "video_audio only" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["ablation"]) == {"fused", "video only", "video_audio only"}
    assert set(metrics["by_kind"]) == {"visual", "acoustic", "both"}
    assert metrics["n"] == metrics["n_normal"] + metrics["n_anomaly"]
    assert sum(metrics["confusion"].values()) == metrics["n"]
    for name in ("report.md", "roc.png", "ablation.png"):
        assert (tmp_path / name).is_file()


def test_usage_errors_exit_2(data, detector, tmp_path):
    code, _, err = run(["anomaly", "score", data, data / "test.csv", "--out", tmp_path / "s.csv"])
    assert code == 2 and "not an anomaly detector folder" in err
    code, _, err = run(["anomaly", "fit", data / "train.csv", "--out", tmp_path, "--scorer", "x"])
    assert code == 2
    code, _, err = run(["anomaly", "fit", data / "train.csv", "--out", tmp_path, "--encoders", "{"])
    assert code == 2 and "--encoders" in err
    # Evaluation needs both normal and anomaly rows.
    code, _, err = run(["anomaly", "evaluate", detector, data / "val.csv", "--out", tmp_path])
    assert code == 2 and "anomaly" in err


def test_data_errors_exit_1(data, detector, tmp_path):
    (detector.parent / "broken").mkdir()
    (detector.parent / "broken" / "detector.json").write_text("{not json")
    code, _, err = run(
        [
            "anomaly",
            "score",
            detector.parent / "broken",
            data / "test.csv",
            "--out",
            tmp_path / "s.csv",
        ]
    )
    assert code == 1 and "damaged" in err
