"""Numeric and categorical columns in manifests: role inference, declared roles, cells, the
summary and what `validate` reports."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mmfuse.data import read_manifest
from mmfuse.data.validation import validate


def _frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "price": rng.normal(10, 2, n).round(3),
            "color": rng.choice(["red", "green", "blue"], n),
            "grade": rng.integers(1, 4, n),  # few integers: a code
            "age": rng.integers(18, 90, n),  # many integers: a quantity
            "note": [f"a free text note about item {i}" for i in range(n)],
            "shop_id": range(n),
            "label": rng.choice(["a", "b"], n),
        }
    )


def test_roles_are_inferred_from_values(tmp_path):
    frame = _frame(100)
    m = read_manifest(frame, root=tmp_path)
    assert m.roles["price"] == "numeric"
    assert m.roles["color"] == "categorical"
    assert m.roles["grade"] == "categorical"
    assert m.roles["age"] == "numeric"
    assert m.roles["note"] == "text"
    assert m.roles["shop_id"] == "ignore"  # an identifier, not a number to learn from


def test_few_rows_of_short_strings_stay_text(tmp_path):
    # Too little evidence to call 4 strings categories: existing small manifests keep text.
    m = read_manifest(pd.DataFrame({"t": ["a", "b", "a", "b"], "label": [0, 1, 0, 1]}))
    assert m.roles["t"] == "text"


def test_cells_become_floats_and_canonical_categories_from_csv(tmp_path):
    frame = pd.DataFrame(
        {"x": ["1.5", "", "2", "abc"], "c": ["3", "3.0", "", "x"], "label": [0, 1, 0, 1]}
    )
    frame.to_csv(tmp_path / "m.csv", index=False)
    m = read_manifest(tmp_path / "m.csv", modalities={"x": "numeric", "c": "categorical"})
    assert list(m.frame["x"]) == [1.5, None, 2.0, "abc"]
    assert list(m.frame["c"]) == ["3", "3", None, "x"]  # 3 and 3.0 are one category
    summary = m.summary()
    assert "x                    numeric, 1 missing, 1.5 to 2" in summary
    assert "c                    categorical, 1 missing, 2 categories" in summary


def test_validate_names_bad_numbers_and_single_categories(tmp_path):
    frame = pd.DataFrame(
        {
            "x": [1.0, math.inf, 2.0, 3.0, None],
            "c": ["a", "a", "b", "b", "lonely"],
            "label": ["p", "q", "p", "q", "p"],
        }
    )
    m = read_manifest(frame, modalities={"x": "numeric", "c": "categorical"}, root=tmp_path)
    found = {(p.row, p.column, p.severity, p.reason) for p in validate(m)}
    assert (1, "x", "error", "non-finite") in found
    assert (4, "c", "warning", "single-sample-category") in found
    assert not any(p.column == "x" and p.reason == "mostly-text" for p in validate(m))


def test_validate_flags_a_numeric_column_that_is_mostly_text(tmp_path):
    frame = pd.DataFrame({"x": ["1", "two", "three", "four"], "label": ["p", "q", "p", "q"]})
    m = read_manifest(frame, modalities={"x": "numeric"}, root=tmp_path)
    problems = validate(m)
    mostly = [p for p in problems if p.reason == "mostly-text"]
    assert len(mostly) == 1 and mostly[0].column == "x" and "categorical" in mostly[0].message
    assert {p.row for p in problems if p.reason == "not-a-number"} == {1, 2, 3}


@pytest.mark.parametrize("role", ["numeric", "categorical"])
def test_declared_tabular_roles_read_no_files(tmp_path, role):
    frame = pd.DataFrame({"v": ["1", "2", "1", "2"], "label": ["p", "q", "p", "q"]})
    m = read_manifest(frame, modalities={"v": role}, root=tmp_path)
    assert m.inputs == {"v": role}
    assert not [p for p in validate(m) if p.reason == "missing"]  # no file lookups


def test_avdigits_tabular_columns_are_optional_deterministic_and_tied_to_the_digit(tmp_path):
    from mmfuse.data.avdigits_tabular import INKS, tabular_manifests, with_tabular

    digits = np.arange(2000) % 10
    frame = pd.DataFrame({"image": [f"{i}.png" for i in digits], "label": digits})
    out = with_tabular(frame, seed=0, split="train")
    assert list(out.columns) == ["image", "weight", "ink", "label"]
    pd.testing.assert_frame_equal(out, with_tabular(frame, seed=0, split="train"))
    assert not out.equals(with_tabular(frame, seed=0, split="test"))
    weight = out["weight"].astype(float)
    assert 0.05 < weight.isna().mean() < 0.15
    assert np.corrcoef(weight[weight.notna()], digits[weight.notna()])[0, 1] > 0.7
    inks = out["ink"].dropna()
    agree = (inks == np.asarray(INKS)[digits[inks.index] % 5]).mean()
    assert 0.55 < agree < 0.8  # weakly tied: often the digit's ink, often not

    frame.to_csv(tmp_path / "train.csv", index=False)
    paths = tabular_manifests({"train": tmp_path / "train.csv"}, seed=0)
    assert paths["train"].name == "train-tabular.csv"
    assert list(pd.read_csv(tmp_path / "train.csv").columns) == ["image", "label"]  # unchanged
    m = read_manifest(paths["train"])
    assert m.inputs == {"image": "image", "weight": "numeric", "ink": "categorical"}
