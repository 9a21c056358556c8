"""Batch prediction under faults: a real SIGKILL of `mmfuse predict` at every stage (parts,
combine, rename, clean-up), then a rerun, gives every row exactly once and prints the count it
wrote; `--resume` takes the same manifest by another path; non-finite probabilities are never
given out (an `error` cell, or a one-sentence error for one sample)."""

from __future__ import annotations

import io
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from mmfuse.cli import main
from mmfuse.errors import MmfuseError
from mmfuse.infer import streamed
from mmfuse.infer.streamed import NON_FINITE, PAUSE_ENV, STAGES, predict_manifest
from train_helpers import saved_tiny_model

ROWS = 15


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny model, its 15-row manifest and the reference output of an unbroken run."""
    root = tmp_path_factory.mktemp("faults")
    model_dir, manifest, _ = saved_tiny_model(root)
    reference = root / "reference.parquet"
    predict_manifest(model_dir, manifest, reference, progress=False, log=print)
    return model_dir, manifest, pd.read_parquet(reference)


def mmfuse_predict(model_dir, manifest, out, *extra, cwd, pause: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV}
    if pause is not None:
        env[PAUSE_ENV] = pause  # the test-only hook: stop there, for us to SIGKILL
    command = [sys.executable, "-m", "mmfuse", "predict", str(model_dir), str(manifest)]
    command += ["--out", str(out), "--proba", "--chunk-rows", "4", "--batch-size", "2", *extra]
    return subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE)


def wait_for(process: subprocess.Popen, marker: bytes, seconds: float = 120) -> None:
    """Read the process's stderr until `marker` shows (the process then sleeps there)."""
    seen, deadline = b"", time.monotonic() + seconds
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and process.poll() is None, seen.decode(errors="replace")[-2000:]
        ready, _, _ = select.select([process.stderr], [], [], min(left, 1.0))
        if ready:
            seen += os.read(process.stderr.fileno(), 65536)


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


CASES = [  # stage, output, rerun with --resume?
    ("part", ".csv", True),
    ("combine", ".csv", True),
    ("combine", ".csv", False),
    ("combine", ".parquet", True),
    ("rename", ".csv", True),
    ("cleanup", ".parquet", True),
]


@pytest.mark.parametrize(("stage", "suffix", "resume"), CASES)
def test_sigkill_at_every_stage_then_rerun_gives_every_row_once(
    model, tmp_path, capsys, stage, suffix, resume
):
    assert {c[0] for c in CASES} == set(STAGES)
    model_dir, manifest, reference = model
    shutil.copytree(manifest.parent, tmp_path / "data")
    out = tmp_path / f"preds{suffix}"
    # The victim (a subprocess) names the manifest and output relative to its folder; the
    # rerun (in this process) names them absolute.
    victim = mmfuse_predict(
        model_dir, Path("data") / manifest.name, out.name, cwd=tmp_path, pause=stage
    )
    try:
        wait_for(victim, f"paused at {stage}".encode())
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    again = ["--resume"] if resume else []
    absolute = [str(model_dir), str(tmp_path / "data" / manifest.name), "--out", str(out)]
    capsys.readouterr()
    code = main(["predict", *absolute, "--proba", "--chunk-rows", "4", *again])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    table = read_table(out)
    assert table["row"].tolist() == list(range(ROWS))  # every row, exactly once, in order
    printed = re.findall(r"wrote (\d+) rows", err)
    assert printed == [str(len(table))]  # the count printed is the count written
    proba = [c for c in reference.columns if c.startswith("proba_")]
    np.testing.assert_allclose(table[proba].to_numpy(), reference[proba].to_numpy(), atol=1e-6)
    assert table["prediction"].tolist() == reference["prediction"].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", out.name]  # no leftovers


def test_resume_refuses_another_manifest_but_takes_the_same_one_by_another_path(
    model, tmp_path, monkeypatch
):
    model_dir, manifest, _ = model
    shutil.copytree(manifest.parent, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "preds.csv"

    def killed(*args):
        raise KeyboardInterrupt("killed before the combine")

    monkeypatch.setattr(streamed, "_combine", killed)
    with pytest.raises(KeyboardInterrupt):
        predict_manifest(model_dir, "data/manifest.csv", out, chunk_rows=4, progress=False)
    monkeypatch.undo()
    other = tmp_path / "other.csv"
    pd.read_csv(tmp_path / "data" / "manifest.csv").head(9).to_csv(other, index=False)
    with pytest.raises(MmfuseError, match="another job"):
        predict_manifest(model_dir, other, out, chunk_rows=4, resume=True, progress=False)
    same = tmp_path / "data" / ".." / "data" / "manifest.csv"  # absolute, through ..
    result = predict_manifest(
        model_dir, same, out, chunk_rows=4, resume=True, progress=False, log=lambda s: None
    )
    assert result["parts_reused"] == 4 and result["rows"] == ROWS
    assert pd.read_csv(out)["row"].tolist() == list(range(ROWS))


# ---------------------------------------------------------------------------------- non-finite
@pytest.fixture(scope="module")
def poisoned(model, tmp_path_factory) -> Path:
    """The model with one head weight set to NaN: every probability it gives is NaN."""
    folder = tmp_path_factory.mktemp("poisoned") / "model"
    shutil.copytree(model[0], folder)
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in sorted(weights) if k.startswith("heads") and k.endswith("weight"))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, folder / "model.safetensors")
    return folder


def nan_wav(path: Path) -> Path:
    x = np.sin(np.linspace(0, 200, 16000)).astype(np.float32)
    x[::7] = np.nan
    sf.write(path, x, 16000, subtype="FLOAT")
    return path


def test_non_finite_rows_get_an_error_cell_not_a_prediction(model, tmp_path, capsys):
    model_dir, manifest, _ = model
    frame = pd.read_csv(manifest)
    for column in ("image", "audio"):
        frame[column] = [str(manifest.parent / p) for p in frame[column]]
    frame.loc[2, "audio"] = str(nan_wav(tmp_path / "nan.wav"))
    frame.to_csv(tmp_path / "m.csv", index=False)
    code = main(
        [
            "predict",
            str(model_dir),
            str(tmp_path / "m.csv"),
            "--out",
            str(tmp_path / "p.csv"),
            "--proba",
        ]
    )
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(tmp_path / "p.csv")
    assert pd.isna(table.loc[2, "prediction"]) and "non-finite" in table.loc[2, "error"]
    assert table.drop(index=2)["prediction"].notna().all()
    assert table.drop(index=2)["error"].isna().all()
    assert "wrote 15 rows to" in (err := capsys.readouterr().err)
    assert "(1 without a prediction: the `error` column says why)" in err


def test_a_poisoned_model_gives_no_prediction_anywhere(poisoned, model, tmp_path, capsys):
    _, manifest, _ = model
    out = tmp_path / "p.parquet"
    assert main(["predict", str(poisoned), str(manifest), "--out", str(out), "--proba"]) == 1
    table = pd.read_parquet(out)
    assert table["prediction"].isna().all() and (table["error"] == NON_FINITE).all()
    capsys.readouterr()
    assert main(["predict", str(poisoned), str(manifest), "--proba"]) == 1  # CSV on stdout
    captured = capsys.readouterr()
    assert "15 of 15 rows have no prediction: the model's probabilities" in captured.err
    assert pd.read_csv(io.StringIO(captured.out))["prediction"].isna().all()
    assert main(["predict", str(poisoned), "--text", "a red square"]) == 1  # one sample
    err = capsys.readouterr().err
    assert "NaN or Inf" in err and len(err.strip().splitlines()) == 1
