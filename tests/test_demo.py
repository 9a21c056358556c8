"""The demo: its plumbing and its ensemble row on a tiny avdigits, and (slow) that fusion wins on
a reduced one."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmfuse.cli.common import model_folder
from mmfuse.demo import ENSEMBLE, RUNS, format_results, run_demo
from mmfuse.model.ensemble import EnsembleModel
from mmfuse.model.saved import load_model

SINGLE = ["image only", "audio only", "video only (frames)"]
FUSED = "fused (image+audio+video+text)"


# One demo run per module (its avdigits generated once): two single runs and the ensemble.
RUNS_TRIED = ["image only", "video frames + its audio track", ENSEMBLE]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMFUSE_CACHE", str(root / "cache"))
        results = run_demo(root / "demo", samples=60, epochs=1, runs=RUNS_TRIED, log=lines.append)
    return root, results, lines


def test_demo_runs_and_writes_a_report_per_run(demo):
    root, results, lines = demo
    assert list(results) == RUNS_TRIED
    for r in results.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["train_time"] > 0
        assert (root / "demo").exists() and r["report"].endswith("report.md")
    table = format_results(results)
    assert table in lines and all(name in table for name in RUNS_TRIED)
    # Every run folder it prints is a model folder that `mmfuse serve` and `predict` load.
    printed = [
        line.split("model folder: ")[1].split(" (")[0] for line in lines if "model folder:" in line
    ]
    assert printed == [r["model"] for r in results.values()]
    for folder in printed:
        assert model_folder(folder) == Path(folder)
        _, config, _ = load_model(folder)
        run = _run_of(results, folder)
        expected = RUNS["fused (image+audio+video+text)" if run == ENSEMBLE else run]
        assert sorted(config.inputs) == sorted(expected)
    # The frames + track run reads the same file twice: as video and as its audio track.
    track = RUNS["video frames + its audio track"]
    assert {c.column for c in track.values()} == {"video"}
    assert {c.modality for c in track.values()} == {"video", "audio"}


def test_the_demo_has_an_ensemble_row(demo):
    _, results, _ = demo
    model, _, _ = load_model(results[ENSEMBLE]["model"])
    assert isinstance(model, EnsembleModel)
    assert set(model.members) <= {"attention-seed0", "gated-seed0", "late-seed0"}


def _run_of(results: dict, folder: str) -> str:
    return next(name for name, r in results.items() if r["model"] == folder)


@pytest.mark.slow
def test_fusion_beats_the_best_single_modality(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE", str(tmp_path / "cache"))
    results = run_demo(tmp_path / "demo", samples=800, runs=[*SINGLE, FUSED], log=print)
    best_single = max(results[name]["accuracy"] for name in SINGLE)
    assert results[FUSED]["accuracy"] > best_single, results
