"""Manifests: formats, role inference, declared roles, labels, folder layouts, summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import mmfuse
from mmfuse import ManifestError, read_manifest

ROWS = [
    {"img": "a/1.jpg", "wav": "1.wav", "clip": "v/1.mp4", "caption": "a red cat", "label": "cat"},
    {
        "img": "a/2.png",
        "wav": "2.flac",
        "clip": "v/2.webm",
        "caption": "a dog runs",
        "label": "dog",
    },
    {"img": "", "wav": "3.mp3", "clip": "", "caption": "", "label": "dog"},
]


def _write(tmp_path: Path, kind: str) -> Path:
    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"m.{kind}"
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS))
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_formats_infer_roles_and_resolve_paths(tmp_path, kind):
    m = read_manifest(_write(tmp_path, kind))
    assert m.roles == {
        "img": "image",
        "wav": "audio",
        "clip": "video",
        "caption": "text",
        "label": "label",
    }
    assert m.labels == ["label"] and m.classes == {"label": ["cat", "dog"]}
    assert m.frame.at[0, "img"] == str(tmp_path.resolve() / "a" / "1.jpg")
    assert m.value(2, "img") is None and m.value(2, "clip") is None  # empty cell = missing
    assert m.value(2, "caption") is None
    assert m.value(0, "caption") == "a red cat"  # inline text is not a path
    assert len(m) == 3


def test_dataframe_with_root_and_declared_roles(tmp_path):
    frame = pd.DataFrame(
        {
            "front": ["f1.jpg", "f2.jpg"],
            "back": ["b1.jpg", None],
            "notes": ["n1.txt", "n2.txt"],
            "score": [1, 2],
            "id": ["x1", "x2"],
            "y": [0, 1],
        }
    )
    m = read_manifest(frame, label="y", modalities={"id": "ignore"}, root=tmp_path)
    assert m.inputs == {"front": "image", "back": "image", "notes": "text", "score": "numeric"}
    assert m.roles["id"] == "ignore" and "id" not in m.uninferred  # declared, not a mystery
    assert m.text_files == {"notes"}
    assert m.value(0, "notes") == str(tmp_path.resolve() / "n1.txt")
    assert m.value(1, "back") is None
    assert m.classes["y"] == ["0", "1"]  # labels are text; ints and "0" are one class


def test_numeric_labels_sort_as_numbers_and_floats_collapse():
    m = read_manifest(pd.DataFrame({"text": ["a b", "c d", "e f"], "target": [10, 2.0, 9]}))
    assert m.label == "target"
    assert m.classes["target"] == ["2", "9", "10"]


def test_labels_are_the_same_classes_from_csv_parquet_and_dataframes(tmp_path):
    # A float column with a gap: CSV holds 0.0, 1.0 and an empty cell, Parquet floats and NaN,
    # and a DataFrame made with astype(str) the text "nan". One set of classes from all.
    pytest.importorskip("pyarrow")
    texts = ["hello", "world", "again", "more", "text", "last"]
    frame = pd.DataFrame({"text": texts, "label": [0.0, 1.0, float("nan"), 1.0, 0.0, 1.0]})
    frame.to_csv(tmp_path / "m.csv", index=False)
    frame.to_parquet(tmp_path / "m.parquet")
    as_text = frame.assign(label=["0.0", "1.0", "nan", "1.0", "0.0", "1"])
    blank = frame.assign(label=["0", "1", "", "1", "0", "1"])
    for source in (tmp_path / "m.csv", tmp_path / "m.parquet", frame, as_text, blank):
        manifest = read_manifest(source)
        assert manifest.classes == {"label": ["0", "1"]}, source
        assert list(manifest.frame["label"]) == ["0", "1", None, "1", "0", "1"], source
    # Text that merely looks numeric stays as it is; "none" may be a real class.
    odd = read_manifest(pd.DataFrame({"text": ["a", "b", "c"], "label": ["1.5", "none", "1e3"]}))
    assert odd.classes == {"label": ["1.5", "1e3", "none"]}


def test_multitask_labels_and_errors(tmp_path):
    frame = pd.DataFrame({"t": ["x y", "z w"], "a": ["p", "q"], "b": ["r", None]})
    m = read_manifest(frame, label=["a", "b"])
    assert m.labels == ["a", "b"] and m.classes == {"a": ["p", "q"], "b": ["r"]}
    with pytest.raises(ManifestError, match="label column 'nope' is not in"):
        read_manifest(frame, label="nope")
    with pytest.raises(ManifestError, match="role 'picture'"):
        read_manifest(frame, modalities={"t": "picture"})
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "missing.csv")
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(ManifestError, match="unknown extension"):
        read_manifest(tmp_path / "m.xlsx")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(tmp_path / "bad.parquet")


def test_mixed_modalities_in_one_column_is_not_guessed():
    frame = pd.DataFrame({"media": ["a.jpg", "b.wav", "c.mp4", "d.png"], "label": list("abab")})
    m = read_manifest(frame)
    assert m.roles["media"] == "ignore"
    assert "several modalities" in m.uninferred["media"]


def test_folder_layout_pairs_files_by_stem(tmp_path):
    for cls in ("cat", "dog"):
        d = tmp_path / cls
        d.mkdir()
        for stem in ("0001", "0002"):
            (d / f"{stem}.jpg").write_bytes(b"x")
            (d / f"{stem}.wav").write_bytes(b"x")
        (d / "0001.txt").write_text("a caption")
        (d / ".hidden.jpg").write_bytes(b"x")
        (d / "notes.md").write_text("ignored")
    m = read_manifest(tmp_path)
    assert len(m) == 4
    assert m.inputs == {"audio": "audio", "image": "image", "text": "text"}
    assert m.classes["label"] == ["cat", "dog"]
    first = m.frame.iloc[0]
    assert Path(first["image"]).name == "0001.jpg" and Path(first["audio"]).name == "0001.wav"
    assert m.text_files == {"text"}
    assert m.frame["text"].isna().sum() == 2  # only 0001 has a caption in each class
    summary = m.summary()
    assert "4 rows" in summary and "cat: 2" in summary and "2 missing" in summary


def test_folder_without_classes_is_a_clear_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(ManifestError, match="no class sub-folders"):
        read_manifest(tmp_path)


def test_public_api():
    assert mmfuse.read_manifest is read_manifest
    assert callable(mmfuse.validate) and issubclass(mmfuse.MediaError, mmfuse.MmfuseError)


def test_column_values_are_every_rows_value_at_once(tmp_path):
    frame = pd.DataFrame(
        {
            "img": ["a.jpg", None, "  ", "d.jpg"],
            "caption": ["x", float("nan"), "z", ""],
            "weight": [1.5, float("nan"), 3.0, 4.0],
            "y": [0, 1, 0, 1],
        }
    )
    m = read_manifest(frame, label="y", modalities={"caption": "text"}, root=tmp_path)
    for column in ("img", "caption", "weight"):
        values = m.column_values(column)
        assert values == [m.value(r, column) for r in range(len(m))]
    assert m.column_values("img")[1:3] == [None, None]  # empty and blank cells are missing
