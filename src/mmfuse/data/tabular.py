"""Numbers and categories in a manifest: how a column is recognised, what its cells become, and
what `validate` says about them.

A `numeric` cell becomes a Python float (text that is not a number is kept as it is, so that
`validate` can name it and loading can refuse it); a `categorical` cell becomes its text, written
the same whatever the source (3, 3.0, "3" and "3.0" are the category "3"). A missing cell is
None, which the model treats as a missing input (its mask), exactly as an empty media cell.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

# A column of strings (or integers) is categorical when it has at most this many distinct
# values, and at most `CATEGORY_SHARE` of its filled cells: few values, each seen many times.
# Free text (captions, notes) has many distinct values, and usually several words each.
MAX_CATEGORIES = 100
CATEGORY_SHARE = 0.05
MAX_CATEGORY_WORDS = 3
# Below this many filled cells there is too little evidence to call strings categories.
MIN_ROWS_FOR_CATEGORIES = 20
# "3.0", "-1.00": an integer written as a float, as a CSV of a float column holds it.
_INTEGRAL_FLOAT = re.compile(r"([+-]?\d+)\.0*")
# What pandas and str() make of a missing value.
_MISSING_TEXT = frozenset({"", "nan", "<na>"})


def is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def category_text(v) -> str | None:
    """A category (or a label) as text, the same from every source; None when missing."""
    if v is None:
        return None
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return None
        if float(v).is_integer():
            v = int(v)
    text = str(v).strip()
    if text.lower() in _MISSING_TEXT:
        return None
    integral = _INTEGRAL_FLOAT.fullmatch(text)
    if integral:
        text = str(int(integral[1]))  # exact, however many digits
    return text


def number_cell(v):
    """A numeric cell: a float, None when missing, the text itself when it is not a number."""
    if v is None:
        return None
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        f = float(v)
        return None if math.isnan(f) else f
    text = str(v).strip()
    if not text:
        return None
    try:
        f = float(text)
    except ValueError:
        return text
    return None if math.isnan(f) else f


def tabular_role(present: list[str]) -> str | None:
    """ "numeric", "categorical" or None (neither) for a column's filled cells, as text.

    Numbers are numeric unless they are integers with few distinct values (a code, a count of
    rooms); strings are categorical when few distinct short values repeat.
    """
    distinct = set(present)
    few = len(distinct) <= min(MAX_CATEGORIES, max(2, CATEGORY_SHARE * len(present)))
    enough = len(present) >= MIN_ROWS_FOR_CATEGORIES
    if all(is_number(v) for v in present):
        integral = all(
            category_text(v) is not None and category_text(v).lstrip("+-").isdigit()
            for v in distinct
        )
        return "categorical" if integral and few and enough else "numeric"
    short = max(len(v.split()) for v in distinct) <= MAX_CATEGORY_WORDS
    return "categorical" if few and enough and short else None


def tabular_problems(column: str, role: str, values: list) -> list[tuple]:
    """`(severity, reason, message, row)` for a numeric or categorical column's cells."""
    if role == "numeric":
        return _numeric_problems(values)
    if role == "categorical":
        return _categorical_problems(column, values)
    return []


def _numeric_problems(values: list) -> list[tuple]:
    found = []
    filled = [v for v in values if v is not None]
    text = [r for r, v in enumerate(values) if isinstance(v, str)]
    if filled and len(text) > len(filled) / 2:
        found.append(
            (
                "error",
                "mostly-text",
                f"{len(text)} of {len(filled)} cells are not numbers; declare the column "
                "text or categorical (--modality COLUMN=categorical)",
                None,
            )
        )
    for row, v in enumerate(values):
        if isinstance(v, str):
            found.append(("error", "not-a-number", f"{v!r} is not a number", row))
        elif isinstance(v, float) and not math.isfinite(v):
            found.append(("error", "non-finite", f"{v} is not a finite number", row))
    return found


def _categorical_problems(column: str, values: list) -> list[tuple]:
    counts = Counter(v for v in values if v is not None)
    return [
        (
            "warning",
            "single-sample-category",
            f"category {v!r} of {column!r} appears once: the model learns nothing from it and "
            "treats it as unknown unless it is in the training split",
            row,
        )
        for row, v in enumerate(values)
        if v is not None and counts[v] == 1
    ]
