"""The --max-* flags set the decode budgets every reader of the command checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmfuse.cli import main
from mmfuse.data.budgets import ENV


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    # Registered with monkeypatch, so whatever the command sets is undone after the test.
    for variable in ENV.values():
        monkeypatch.setenv(variable, "")
    Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "b.png")
    path = tmp_path / "m.csv"
    pd.DataFrame({"image": ["a.png", "b.png"], "label": ["x", "y"]}).to_csv(path, index=False)
    return path


def test_max_image_pixels_refuses_a_larger_image(manifest, capsys):
    assert main(["validate", str(manifest), "--json"]) == 0
    capsys.readouterr()
    assert main(["validate", str(manifest), "--json", "--max-image-pixels", "10000"]) == 1
    report = json.loads(capsys.readouterr().out)
    problems = [p for p in report["problems"] if p["severity"] == "error"]
    assert [(p["row"], p["reason"]) for p in problems] == [(0, "too-large")]


def test_a_budget_that_is_not_positive_is_a_usage_error(manifest, capsys):
    assert main(["validate", str(manifest), "--max-audio-seconds", "0"]) == 2
    assert "--max-" in capsys.readouterr().err


def test_every_command_that_reads_media_takes_the_flags(capsys):
    for command in ("validate", "train", "evaluate", "predict", "detect", "serve"):
        assert main([command, "--help"]) == 0
        assert "--max-video-pixels" in capsys.readouterr().out
