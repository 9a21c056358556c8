"""Manifests: a table of samples whose columns hold media paths, text and labels.

`read_manifest` takes a CSV/TSV/JSONL/Parquet path, a pandas DataFrame or a class-per-folder
layout and returns one `Manifest`: the rows, every column's role, the label columns and their
class names. Paths are resolved to absolute ones here, once, so nothing downstream needs to know
where the manifest lived.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mmfuse.data.modalities import EXTENSIONS, MODALITIES, TABULAR, modality_of_path
from mmfuse.data.tabular import category_text, is_number, number_cell, tabular_role
from mmfuse.errors import ManifestError

ROLES = (*MODALITIES, "label", "ignore")
LABEL_NAMES = ("label", "labels", "class", "target", "category", "y")
MANIFEST_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# A column is given a media role when at least this share of its non-empty cells carry that
# modality's extensions; the rest then show up in `validate` as bad rows instead of hiding the
# whole column as text.
_ROLE_MAJORITY = 0.8


@dataclass
class Manifest:
    """Rows of samples plus what each column means. Missing cells are None."""

    frame: pd.DataFrame
    roles: dict[str, str]  # every column → one of ROLES
    labels: list[str]  # label columns (several for multi-task)
    classes: dict[str, list[str]]  # label column → sorted class names
    root: Path  # relative paths were resolved against this folder
    source: str = "<DataFrame>"
    text_files: frozenset[str] = frozenset()  # text columns holding .txt paths
    uninferred: dict[str, str] = field(default_factory=dict)  # column → why no role

    @property
    def inputs(self) -> dict[str, str]:
        """Input columns → modality, in the table's column order."""
        return {c: r for c, r in self.roles.items() if r in MODALITIES}

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None

    def modalities(self) -> list[str]:
        return sorted(set(self.inputs.values()))

    def __len__(self) -> int:
        return len(self.frame)

    def value(self, row: int, column: str):
        v = self.frame.at[row, column]
        return None if _is_missing(v) else v

    def column_values(self, column: str) -> list:
        """Every row's `value` of `column`, at once (a lookup per cell costs a DataFrame's
        indexing each time; a loader asks for every cell of every epoch)."""
        return [None if _is_missing(v) else v for v in self.frame[column].tolist()]

    def summary(self) -> str:
        """A one-screen description: rows, columns with roles and missing counts, classes."""
        n = len(self.frame)
        lines = [f"{self.source}: {n} rows"]
        for col, role in self.roles.items():
            missing = int(self.frame[col].map(_is_missing).sum())
            note = f", {missing} missing" if missing else ""
            if role == "ignore" and col in self.uninferred:
                note += f" — ignored: {self.uninferred[col]}"
            elif col in self.text_files:
                note += ", read from .txt files"
            elif role in TABULAR:
                note += _tabular_note(role, self.frame[col])
            lines.append(f"  {col:<20} {role}{note}")
        for col in self.labels:
            counts = Counter(v for v in self.frame[col] if not _is_missing(v))
            lines.append(f"  classes in {col!r} ({len(counts)}):")
            per_class = [f"{c}: {counts[c]}" for c in self.classes[col]]
            # Wrap so a 100-class manifest still fits on a screen.
            for i in range(0, len(per_class), 8):
                lines.append("    " + "  ".join(per_class[i : i + 8]))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Manifest({self.source!r}, rows={len(self)}, inputs={self.inputs})"

    def __str__(self) -> str:
        return self.summary()


def _tabular_note(role: str, values: pd.Series) -> str:
    filled = [v for v in values if v is not None]
    if role == "categorical":
        return f", {len(set(filled))} categories"
    numbers = [v for v in filled if isinstance(v, float) and math.isfinite(v)]
    if not numbers:
        return ""
    return f", {min(numbers):g} to {max(numbers):g}"


def read_manifest(
    source,
    label: str | list[str] | None = None,
    modalities: dict[str, str] | None = None,
    *,
    root: str | Path | None = None,
) -> Manifest:
    """Read a manifest from a file, a folder or a DataFrame and infer its column roles.

    `label`: the label column(s); by default a column named label/class/target/... is used.
    `modalities`: declared roles, e.g. `{"front": "image", "notes": "text", "id": "ignore"}`;
    other columns are inferred from their values. `root`: the folder relative paths resolve
    against (default: the manifest's folder, or the working directory for a DataFrame).
    """
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
        base = Path(root) if root is not None else Path.cwd()
        name = "<DataFrame>"
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ManifestError(f"manifest {str(path)!r} does not exist")
        if path.is_dir():
            frame = _frame_from_folder(path)
            label = label if label is not None else "label"
        else:
            frame = _read_table(path)
        base = Path(root) if root is not None else path.parent
        name = str(path)
    if frame.empty:
        raise ManifestError(f"manifest {name} has no rows")
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    return _build(frame, label, modalities or {}, base.resolve(), name)


def _read_table(path: Path) -> pd.DataFrame:
    kind = MANIFEST_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        valid = ", ".join(sorted(MANIFEST_SUFFIXES))
        raise ManifestError(f"cannot read manifest {path}: unknown extension; valid: {valid}")
    try:
        if kind in ("csv", "tsv"):
            # Everything as text, and an empty cell as missing (not the string "nan").
            return pd.read_csv(
                path, sep="," if kind == "csv" else "\t", dtype=str, keep_default_na=False
            ).replace({"": None})
        if kind == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as e:
        raise ManifestError(f"cannot read manifest {path} as {kind}: {e}") from None


def _frame_from_folder(root: Path) -> pd.DataFrame:
    """`root/<class>/<files>`; files sharing a stem in one class folder form one sample."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ManifestError(
            f"folder {root} has no class sub-folders; expected root/<class>/<files> "
            "or pass a manifest file"
        )
    known = set().union(*EXTENSIONS.values())
    rows: list[dict] = []
    for class_dir in class_dirs:
        samples: dict[str, dict] = {}
        for f in sorted(class_dir.rglob("*")):
            if not f.is_file() or f.name.startswith(".") or f.suffix.lower() not in known:
                continue
            key = str(f.relative_to(class_dir).with_suffix(""))
            sample = samples.setdefault(key, {})
            modality = modality_of_path(f.name)
            column, n = modality, 1
            while column in sample:  # a second image with the same stem: its own column
                n += 1
                column = f"{modality}_{n}"
            sample[column] = str(f.relative_to(root))
        for sample in samples.values():
            sample["label"] = class_dir.name
            rows.append(sample)
    if not rows:
        raise ManifestError(f"folder {root} holds no image, audio, video or text files")
    media = sorted({c for row in rows for c in row} - {"label"})
    columns = [*media, "label"]
    return pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], dtype=object)


def _build(
    frame: pd.DataFrame,
    label: str | list[str] | None,
    declared: dict[str, str],
    root: Path,
    name: str,
) -> Manifest:
    columns = list(frame.columns)
    for col, role in declared.items():
        if col not in columns:
            raise ManifestError(f"declared column {col!r} is not in {name}; columns: {columns}")
        if role not in ROLES:
            raise ManifestError(f"role {role!r} for column {col!r} is unknown; valid: {ROLES}")

    labels = _find_labels(frame, label, declared, name)
    roles: dict[str, str] = {}
    uninferred: dict[str, str] = {}
    for col in columns:
        if col in labels:
            roles[col] = "label"
        elif col in declared:
            roles[col] = declared[col]
        else:
            roles[col], why = _infer_role(col, frame[col])
            if why:
                uninferred[col] = why

    # Plain Python objects from here on: None for every missing cell, whatever the source.
    frame = pd.DataFrame({col: _map(frame[col], _cell) for col in columns})
    text_files = set()
    for col, role in roles.items():
        if role == "ignore":
            continue
        if role in ("label", "categorical"):
            frame[col] = _map(frame[col], category_text)
            continue
        if role == "numeric":
            frame[col] = _map(frame[col], number_cell)
            continue
        frame[col] = _map(frame[col], lambda v: None if v is None else str(v).strip() or None)
        is_file = role != "text" or _mostly(frame[col], lambda v: v.lower().endswith(".txt"))
        if is_file:
            if role == "text":
                text_files.add(col)
            frame[col] = _map(frame[col], lambda v: None if v is None else _resolve(v, root))

    classes = {col: _sorted_classes({v for v in frame[col] if v is not None}) for col in labels}
    return Manifest(
        frame=frame,
        roles=roles,
        labels=labels,
        classes=classes,
        root=root,
        source=name,
        text_files=frozenset(text_files),
        uninferred=uninferred,
    )


def _find_labels(frame, label, declared, name) -> list[str]:
    columns = list(frame.columns)
    if label is None:
        labels = [c for c, r in declared.items() if r == "label"]
        if not labels:
            by_name = {c.lower(): c for c in columns}
            labels = [by_name[n] for n in LABEL_NAMES if n in by_name][:1]
        return labels
    labels = [label] if isinstance(label, str) else list(label)
    for col in labels:
        if col not in columns:
            raise ManifestError(
                f"label column {col!r} is not in {name}; columns: {columns} (use --label COL)"
            )
    return labels


def _infer_role(col: str, values: pd.Series) -> tuple[str, str]:
    """(role, why-not) for an undeclared column."""
    present = [str(v).strip() for v in values if not _is_missing(v) and str(v).strip()]
    if not present:
        return "ignore", "the column is empty"
    kinds = Counter(modality_of_path(v) for v in present)
    modality, count = kinds.most_common(1)[0]
    if modality is not None and count >= _ROLE_MAJORITY * len(present):
        return modality, ""
    if sum(n for k, n in kinds.items() if k is not None) >= _ROLE_MAJORITY * len(present):
        mix = ", ".join(f"{k}: {n}" for k, n in kinds.most_common() if k)
        return "ignore", f"paths of several modalities ({mix}); declare it with modalities="
    if col.lower() == "id" or col.lower().endswith("_id"):
        return "ignore", "an identifier column"
    return tabular_role(present) or "text", ""


def _map(values: pd.Series, fn) -> pd.Series:
    # pandas turns None into NaN in typed columns; keep an object column of Nones.
    return pd.Series([fn(v) for v in values], dtype=object, index=values.index)


def _cell(v):
    return None if _is_missing(v) else v


def _mostly(values: pd.Series, test) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and sum(map(test, present)) >= _ROLE_MAJORITY * len(present)


def _resolve(value: str, root: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else root / p)


def _sorted_classes(names: set[str]) -> list[str]:
    # Numeric class names sort as numbers (2 before 10), others as text.
    if names and all(is_number(n) for n in names):
        return sorted(names, key=float)
    return sorted(
        names, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
    )


def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def as_manifest(X, *, label=None, modalities=None, root=None) -> Manifest:
    """`X` as a Manifest: a Manifest as it is, else `read_manifest` of a DataFrame, a manifest
    file or a class-per-folder root; any other type is a TypeError naming what is accepted."""
    if isinstance(X, Manifest):
        return X
    if not isinstance(X, (pd.DataFrame, str, os.PathLike)):
        raise TypeError(
            f"expected a DataFrame, a manifest path (CSV/JSONL/Parquet), a class-per-folder "
            f"root or a Manifest, got {type(X).__name__}"
        )
    return read_manifest(X, label=label, modalities=dict(modalities or {}) or None, root=root)
