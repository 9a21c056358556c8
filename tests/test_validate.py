"""`validate` and `mmfuse validate`: every bad row listed, errors vs warnings, exit codes."""

from __future__ import annotations

import importlib
import json
import shutil
import threading
import time

import pandas as pd
import pytest

import media_factory as mf
from mmfuse import validate
from mmfuse.cli import main
from mmfuse.data import Thresholds
from mmfuse.data.budgets import Budgets
from mmfuse.data.image import DECODE_BYTES_PER_PIXEL


@pytest.fixture
def manifest_dir(tmp_path, media):
    """A CSV manifest with relative paths: good rows, each bad file kind and row-level faults."""
    for path in media.values():
        shutil.copy(path, tmp_path / path.name)

    def name(key):
        return media[key].name

    rows = [
        # 0-2: good rows (one class each needs 2+ samples)
        {"image": name("png_rgb"), "audio": name("wav_int16_mono"), "video": name("h264_mp4"), "caption": "a cat", "label": "cat"},
        {"image": name("jpeg_rgb"), "audio": name("flac"), "video": name("vp9_webm"), "caption": "a cat again", "label": "cat"},
        {"image": name("png_named_jpg"), "audio": name("m4a"), "video": name("mpeg4_avi"), "caption": "a dog", "label": "dog"},
        # 3: bad files in every column
        {"image": name("random_jpg"), "audio": name("empty_wav"), "video": name("truncated_mp4"), "caption": "x", "label": "dog"},
        # 4: wrong modality, missing file, huge header
        {"image": name("huge_header_png"), "audio": name("h264_mp4"), "video": "nope.mp4", "caption": "y", "label": "dog"},
        # 5: warnings only: tiny image, near-silent and short audio
        {"image": name("tiny_4x4"), "audio": name("wav_near_silent"), "video": name("text_mp4"), "caption": "z", "label": "cat"},
        # 6: empty label; 7: every input empty; 8: a class with one sample; 9: duplicate of 0
        {"image": name("png_rgb"), "audio": "", "video": "", "caption": "q", "label": ""},
        {"image": "", "audio": "", "video": "", "caption": "", "label": "cat"},
        {"image": name("bmp_rgb"), "audio": name("wav_20ms"), "video": "", "caption": "w", "label": "bird"},
        {"image": name("png_rgb"), "audio": name("wav_int16_mono"), "video": name("h264_mp4"), "caption": "a cat", "label": "cat"},
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    # Paths of two modalities: a column whose role cannot be inferred.
    frame["mixed"] = ["x.png", "y.wav"] * (len(frame) // 2)
    frame.to_csv(tmp_path / "train.csv", index=False)
    return tmp_path


def _found(problems):
    return {(p.row, p.column, p.severity, p.reason) for p in problems}


def test_every_problem_is_listed_with_row_column_and_reason(manifest_dir):
    problems = validate(manifest_dir / "train.csv", thresholds=Thresholds(clip_seconds=1.0))
    found = _found(problems)
    expected = {
        (3, "image", "error", "unreadable"),
        (3, "audio", "error", "zero-length"),
        (3, "video", "error", "truncated"),
        (4, "image", "error", "too-large"),
        (4, "audio", "error", "wrong-modality"),
        (4, "video", "error", "missing"),
        (5, "image", "warning", "tiny-image"),
        (5, "audio", "warning", "near-silent"),
        (5, "video", "error", "wrong-modality"),
        (6, "label", "error", "empty-label"),
        (7, None, "error", "empty-row"),
        (8, "label", "warning", "single-sample-class"),
        (8, "audio", "warning", "short-audio"),
        (9, None, "warning", "duplicate-row"),
        (None, "mixed", "warning", "unknown-role"),
    }
    assert expected <= found, expected - found
    assert not [p for p in problems if p.row in (0, 1, 2)], "good rows must be clean"
    missing = next(p for p in problems if p.reason == "missing")
    assert missing.path.endswith("nope.mp4") and str(manifest_dir) in missing.path
    assert all(p.severity in ("error", "warning") for p in problems)


def test_unknown_labels_against_known_classes(manifest_dir):
    problems = validate(manifest_dir / "train.csv", classes=["cat", "dog"])
    assert (8, "label", "error", "unknown-label") in _found(problems)


def test_video_shorter_than_clip_is_a_warning(manifest_dir):
    problems = validate(manifest_dir / "train.csv", thresholds=Thresholds(clip_seconds=5.0))
    assert (0, "video", "warning", "short-video") in _found(problems)


def test_cli_exit_codes_and_json(manifest_dir, tmp_path, capsys, media):
    assert main(["validate", str(manifest_dir / "train.csv")]) == 1
    out = capsys.readouterr()
    assert "row 3  audio" in out.out and "zero-length" in out.out
    assert "errors in" in out.err and "10 rows" in out.err

    assert main(["validate", str(manifest_dir / "train.csv"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 9 and report["rows_with_errors"] == 5
    assert {"row", "column", "path", "severity", "reason", "message"} <= set(report["problems"][0])

    clean = pd.DataFrame(
        {
            "image": [str(media["png_rgb"]), str(media["jpeg_rgb"]), str(media["tiny_4x4"])],
            "label": ["a", "a", "a"],
        }
    )
    clean.to_csv(tmp_path / "clean.csv", index=False)
    assert main(["validate", str(tmp_path / "clean.csv")]) == 0  # a warning alone exits 0
    assert main(["validate", str(tmp_path / "clean.csv"), "--strict"]) == 1
    capsys.readouterr()

    assert main(["validate", str(tmp_path / "absent.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "clean.csv"), "--label", "nope"]) == 2
    assert main(["validate", str(tmp_path / "clean.csv"), "--modality", "oops"]) == 2
    assert main(["validate"]) == 2  # argparse usage error
    assert main(["--version"]) == 0


def test_cli_help_has_examples(capsys):
    assert main(["validate", "--help"]) == 0
    assert "examples:" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Issue 14: hostile files are errors with their reason; memory bounded whatever the workers


@pytest.fixture
def hostile(tmp_path):
    """name → (column, path, reason validate must give; None: no error)."""
    return {
        "tall": ("image", mf.tall_png(tmp_path), "too-large"),
        "big": ("image", mf.big_png(tmp_path, 9400), "too-large"),
        "nan_tiff": ("image", mf.poisoned_float_tiff(tmp_path), "non-finite"),
        "mjpeg": ("video", mf.huge_mjpeg(tmp_path), "too-large"),
        "nan_wav": ("audio", mf.poisoned_wav(tmp_path, float("nan")), "non-finite"),
        "inf_wav": ("audio", mf.poisoned_wav(tmp_path, float("inf")), "non-finite"),
        "loud_wav": ("audio", mf.poisoned_wav(tmp_path, 1e30), "non-finite"),
        "cut_wav": ("audio", mf.truncated_audio(tmp_path, "wav", keep=0.02), "truncated"),
        "long_flac": ("audio", mf.long_silent_flac(tmp_path, seconds=1200), None),
        "nan_track": ("video", mf.poisoned_video(tmp_path), None),  # the picture is fine
    }


def test_hostile_files_are_errors_with_their_reason(hostile, tmp_path):
    rows = [{col: str(path), "label": "a"} for col, path, _ in hostile.values()]
    problems = validate(pd.DataFrame(rows), workers=4)
    for row, (name, (_col, _path, reason)) in enumerate(hostile.items()):
        errors = {p.reason for p in problems if p.row == row and p.severity == "error"}
        assert errors == ({reason} if reason else set()), (name, errors)
    cut = next(p for p in problems if p.reason == "truncated")
    assert "1.500 s" in cut.message  # the header's promise, not a short-audio warning
    assert not [p for p in problems if p.reason == "short-audio"]
    long_flac = [p.reason for p in problems if p.row == 8]
    assert long_flac == ["near-silent"]  # 20 minutes of silence: measured on the budget


def test_truncated_flac_and_aiff_are_errors(tmp_path):
    rows = [
        {"audio": str(mf.truncated_audio(tmp_path, fmt)), "label": "a"} for fmt in ("flac", "aiff")
    ]
    problems = validate(pd.DataFrame(rows))
    assert [(p.row, p.reason) for p in problems if p.severity == "error"] == [
        (0, "truncated"),
        (1, "truncated"),
    ]


def test_decodes_in_flight_stay_within_the_memory_budget(tmp_path, monkeypatch):
    # (the package's `validate` function hides the module of the same name)
    validate_mod = importlib.import_module("mmfuse.data.validation")
    paths = [mf.image_file(tmp_path, size=(200, 100), name=f"{i}.png") for i in range(12)]
    one = 200 * 100 * DECODE_BYTES_PER_PIXEL  # the share validate estimates for one image
    in_flight, peak, lock = [0], [0], threading.Lock()
    real = validate_mod.read_image

    def slow_read(*args, **kwargs):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(validate_mod, "read_image", slow_read)
    frame = pd.DataFrame({"image": [str(p) for p in paths], "label": ["a"] * 12})
    validate(frame, workers=12, budgets=Budgets(validate_bytes=3 * one))
    assert peak[0] == 3
    peak[0] = 0
    validate(frame, workers=12, budgets=Budgets(validate_bytes=one // 2))  # each runs alone
    assert peak[0] == 1
