"""Streaming, sharded, restartable batch prediction (`mmfuse.infer.streamed`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmfuse.infer import streamed as batch_predict
from mmfuse.infer.streamed import parse_shard, predict_manifest, shard_bounds
from train_helpers import saved_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return saved_tiny_model(tmp_path_factory.mktemp("bp"))


def run(model_dir, manifest, out, **options):
    options = {
        "chunk_rows": 4,
        "batch_size": 3,
        "progress": False,
        "log": lambda s: None,
        **options,
    }
    return predict_manifest(model_dir, manifest, out, **options)


def test_output_matches_the_classifier_and_has_every_row(model, tmp_path):
    model_dir, manifest, clf = model
    result = run(model_dir, manifest, tmp_path / "preds.parquet")
    table = pd.read_parquet(tmp_path / "preds.parquet")
    assert result["rows"] == len(table) == 15
    assert table["row"].tolist() == list(range(15))
    proba = table[[f"proba_{c}" for c in clf.classes_]].to_numpy()
    np.testing.assert_allclose(proba, clf.predict_proba(manifest), atol=1e-5)
    assert list(table["prediction"]) == list(clf.predict(manifest))
    assert not (tmp_path / "preds.parquet.parts").exists()


def test_shards_concatenate_to_the_unsharded_output(model, tmp_path):
    model_dir, manifest, _ = model
    run(model_dir, manifest, tmp_path / "all.csv")
    shards = [run(model_dir, manifest, tmp_path / f"s{i}.csv", shard=(i, 4)) for i in range(4)]
    assert sum(s["rows"] for s in shards) == 15
    whole = pd.read_csv(tmp_path / "all.csv")
    joined = pd.concat([pd.read_csv(tmp_path / f"s{i}.csv") for i in range(4)], ignore_index=True)
    pd.testing.assert_frame_equal(whole, joined)


def test_resume_after_a_crash_reuses_parts_without_duplicates(model, tmp_path, monkeypatch):
    model_dir, manifest, _ = model
    out = tmp_path / "preds.parquet"
    real = batch_predict._write_part
    written = []

    def crash_after_two(path, table):
        if len(written) == 2:
            raise KeyboardInterrupt("killed")
        written.append(path)
        real(path, table)

    monkeypatch.setattr(batch_predict, "_write_part", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(model_dir, manifest, out)
    monkeypatch.setattr(batch_predict, "_write_part", real)
    assert len(list((tmp_path / "preds.parquet.parts").glob("part-*.parquet"))) == 2
    result = run(model_dir, manifest, out, resume=True)
    assert result["parts_reused"] == 2
    table = pd.read_parquet(out)
    assert table["row"].tolist() == list(range(15))  # no row twice, none missing
    fresh = run(model_dir, manifest, tmp_path / "fresh.parquet")
    assert fresh["parts_reused"] == 0
    pd.testing.assert_frame_equal(table, pd.read_parquet(tmp_path / "fresh.parquet"))


def test_resume_refuses_parts_of_another_job(model, tmp_path, monkeypatch):
    model_dir, manifest, _ = model
    out = tmp_path / "preds.csv"
    monkeypatch.setattr(batch_predict, "_combine", lambda *a: (_ for _ in ()).throw(OSError))
    with pytest.raises(OSError):
        run(model_dir, manifest, out)
    monkeypatch.undo()
    with pytest.raises(batch_predict.MmfuseError, match="another job"):
        run(model_dir, manifest, out, resume=True, shard=(1, 2))


def test_unreadable_rows_get_an_error_not_a_prediction(model, tmp_path):
    model_dir, manifest, _ = model
    frame = pd.read_csv(manifest)
    frame["image"] = [str(manifest.parent / p) for p in frame["image"]]
    frame["audio"] = [str(manifest.parent / p) for p in frame["audio"]]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    frame.loc[3, "image"] = str(bad)
    result = run(model_dir, frame, tmp_path / "preds.csv")
    table = pd.read_csv(tmp_path / "preds.csv")
    assert result["failed"] == 1
    assert pd.isna(table.loc[3, "prediction"]) and "image" in table.loc[3, "error"]
    assert table["prediction"].notna().sum() == 14


def test_shard_arithmetic():
    assert [shard_bounds(10, i, 3) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(batch_predict.MmfuseError):
            parse_shard(bad)


def test_cli_streams_a_shard_to_parquet(model, tmp_path, capsys):
    from mmfuse.cli import main

    model_dir, manifest, _ = model
    out = tmp_path / "half.parquet"
    code = main(["predict", str(model_dir), str(manifest), "--out", str(out), "--shard", "1/2"])
    assert code == 0, capsys.readouterr().err
    assert pd.read_parquet(out)["row"].tolist() == list(range(7, 15))
    assert main(["predict", str(model_dir), str(manifest), "--shard", "1/2"]) == 2  # needs --out


KILL_SCRIPT = r"""
import sys, time
from mmfuse.infer import streamed as batch_predict

real = batch_predict._predict_chunk
def slow(*args, **kwargs):  # slow each chunk down so that the kill lands between parts
    time.sleep(float(sys.argv[4]))
    return real(*args, **kwargs)
batch_predict._predict_chunk = slow
batch_predict.predict_manifest(
    sys.argv[1], sys.argv[2], sys.argv[3], chunk_rows=2, batch_size=2, progress=False,
    resume=True,
)
"""


def test_sigkill_mid_run_then_resume_gives_every_row_once(model, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    model_dir, manifest, _ = model
    out = tmp_path / "preds.parquet"
    script = tmp_path / "predict.py"
    script.write_text(KILL_SCRIPT)
    args = [sys.executable, str(script), str(model_dir), str(manifest), str(out)]
    victim = subprocess.Popen([*args, "0.4"], stderr=subprocess.PIPE)
    parts = tmp_path / "preds.parquet.parts"
    deadline = time.monotonic() + 60
    while len(list(parts.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
        assert victim.poll() is None, victim.communicate()
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    written = len(list(parts.glob("part-*.parquet")))
    assert 3 <= written < 8 and not out.exists()  # killed mid-run, between parts
    done = subprocess.run([*args, "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_parquet(out)
    assert table["row"].tolist() == list(range(15))
    fresh = run(model_dir, manifest, tmp_path / "fresh.parquet")
    assert fresh["rows"] == 15
    pd.testing.assert_frame_equal(table, pd.read_parquet(tmp_path / "fresh.parquet"))
