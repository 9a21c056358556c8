"""The demo: its plumbing on a tiny avdigits, and (slow) that fusion wins on a reduced one."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmfuse.cli.common import model_folder
from mmfuse.demo import RUNS, format_results, run_demo
from mmfuse.model.saved import load_model

SINGLE = ["image only", "audio only", "video only (frames)"]
FUSED = "fused (image+audio+video+text)"


def test_demo_runs_and_writes_a_report_per_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE", str(tmp_path / "cache"))
    lines = []
    runs = ["image only", "video frames + its audio track"]
    results = run_demo(tmp_path / "demo", samples=60, epochs=1, runs=runs, log=lines.append)
    assert list(results) == runs
    for r in results.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["train_time"] > 0
        assert (tmp_path / "demo").exists() and r["report"].endswith("report.md")
    table = format_results(results)
    assert table in lines and all(name in table for name in runs)
    # Every run folder it prints is a model folder that `mmfuse serve` and `predict` load.
    printed = [
        line.split("model folder: ")[1].split(" (")[0] for line in lines if "model folder:" in line
    ]
    assert printed == [r["model"] for r in results.values()]
    for folder in printed:
        assert model_folder(folder) == Path(folder)
        _, config, _ = load_model(folder)
        assert sorted(config.inputs) == sorted(RUNS[_run_of(results, folder)])
    # The frames + track run reads the same file twice: as video and as its audio track.
    track = RUNS["video frames + its audio track"]
    assert {c.column for c in track.values()} == {"video"}
    assert {c.modality for c in track.values()} == {"video", "audio"}


def _run_of(results: dict, folder: str) -> str:
    return next(name for name, r in results.items() if r["model"] == folder)


@pytest.mark.slow
def test_fusion_beats_the_best_single_modality(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE", str(tmp_path / "cache"))
    results = run_demo(tmp_path / "demo", samples=800, runs=[*SINGLE, FUSED], log=print)
    best_single = max(results[name]["accuracy"] for name in SINGLE)
    assert results[FUSED]["accuracy"] > best_single, results
