"""The demo: its plumbing on a tiny avdigits, and (slow) that fusion wins on a reduced one."""

from __future__ import annotations

import pytest

from mmfuse.demo import RUNS, format_results, run_demo

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
    # The frames + track run reads the same file twice: as video and as its audio track.
    track = RUNS["video frames + its audio track"]
    assert {c.column for c in track.values()} == {"video"}
    assert {c.modality for c in track.values()} == {"video", "audio"}


@pytest.mark.slow
def test_fusion_beats_the_best_single_modality(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE", str(tmp_path / "cache"))
    results = run_demo(tmp_path / "demo", samples=800, runs=[*SINGLE, FUSED], log=print)
    best_single = max(results[name]["accuracy"] for name in SINGLE)
    assert results[FUSED]["accuracy"] > best_single, results
