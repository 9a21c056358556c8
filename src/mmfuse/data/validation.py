"""Check every row and every referenced file of a manifest before training.

Each problem is reported with its row, column, path and reason; errors (the sample cannot be
used) are told apart from warnings (usable but suspicious). Files are opened in parallel threads:
PyAV, Pillow and libsndfile release the GIL while decoding. How much they decode at once is
bounded by bytes, not by the thread count (see `validate`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from mmfuse.data.audio_scan import audio_stats
from mmfuse.data.budgets import Budgets, resolve
from mmfuse.data.image import DECODE_BYTES_PER_PIXEL, image_size, read_image
from mmfuse.data.manifest import Manifest, read_manifest
from mmfuse.data.modalities import reads_file, sniff
from mmfuse.data.tabular import tabular_problems
from mmfuse.data.text import read_text
from mmfuse.data.video import frame_size, probe_video, read_video
from mmfuse.errors import MediaError

SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest. `row` is the 0-based data row (None: whole manifest)."""

    severity: str  # "error": the sample cannot be used; "warning": usable but suspicious
    reason: str  # short tag: missing, truncated, empty-label, single-sample-class, ...
    message: str
    row: int | None = None
    column: str | None = None
    path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = "manifest" if self.row is None else f"row {self.row}"
        parts = [where, self.column or "-", self.path or "-", self.severity, self.reason]
        return "  ".join(parts) + f": {self.message}"


@dataclass(frozen=True)
class Thresholds:
    """What counts as suspicious (warnings)."""

    min_image_side: int = 32  # pixels
    min_audio_seconds: float = 0.1
    silence_dbfs: float = -60.0  # RMS level below which audio is called near-silent
    clip_seconds: float | None = None  # a video shorter than this is flagged


def validate(
    manifest,
    label: str | list[str] | None = None,
    modalities: dict[str, str] | None = None,
    *,
    classes: list[str] | None = None,
    thresholds: Thresholds | None = None,
    workers: int | None = None,
    budgets: Budgets | None = None,
) -> list[Problem]:
    """Every problem in a manifest (a `Manifest`, a path or a DataFrame), sorted by row.

    `classes`: the allowed class names; a label outside them is an error.
    Raises `ManifestError` only when the manifest itself cannot be read.

    Memory, whatever `workers` is: each file is decoded within `budgets` (default
    `Budgets.from_env()`; a file over them is a "too-large" error, found from its header), audio
    a block at a time, and the files decoded at once hold at most `budgets.validate_bytes`
    together, each one's share estimated from its header before decoding; a file whose share
    is larger than that is checked alone.
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, label=label, modalities=modalities)
    limits = thresholds or Thresholds()
    budgets = resolve(budgets)
    gate = _MemoryGate(budgets.validate_bytes)
    problems = _manifest_problems(manifest, classes)

    # Each distinct file is checked once, however many rows point at it.
    files: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for col, modality in manifest.inputs.items():
        if not reads_file(modality, col, manifest.text_files):
            continue
        for row, value in enumerate(manifest.frame[col]):
            if value is not None:
                files.setdefault((modality, value), []).append((row, col))

    workers = workers or min(32, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda key: _check_file(*key, limits, budgets, gate), list(files))
        for (_modality, path), found in zip(files, results):
            for severity, reason, message in found:
                for row, col in files[(_modality, path)]:
                    problems.append(Problem(severity, reason, message, row, col, path))

    return sorted(problems, key=lambda p: (-1 if p.row is None else p.row, p.column or ""))


def _manifest_problems(m: Manifest, classes: list[str] | None) -> list[Problem]:
    return [
        *_column_problems(m),
        *_tabular_problems(m),
        *_row_problems(m, classes),
        *_single_sample_classes(m),
        *_duplicate_rows(m),
    ]


def _column_problems(m: Manifest) -> list[Problem]:
    problems = [
        Problem("warning", "unknown-role", f"column ignored: {why}", None, col)
        for col, why in m.uninferred.items()
    ]
    if not m.inputs:
        problems.append(
            Problem(
                "error",
                "no-inputs",
                "no image, audio, video, text, numeric or categorical column was found",
            )
        )
    if not m.labels:
        problems.append(
            Problem(
                "warning",
                "no-label",
                "no label column found (named label/class/target); pass --label COL",
            )
        )
    return problems


def _tabular_problems(m: Manifest) -> list[Problem]:
    """Numbers that are not finite or not numbers, categories seen once (see data.tabular)."""
    return [
        Problem(severity, reason, message, row, col)
        for col, role in m.inputs.items()
        for severity, reason, message, row in tabular_problems(col, role, list(m.frame[col]))
    ]


def _row_problems(m: Manifest, classes: list[str] | None) -> list[Problem]:
    """Rows with no input at all, and empty or unknown labels."""
    problems = []
    inputs = list(m.inputs)
    for row in range(len(m)):
        if inputs and all(m.frame.at[row, c] is None for c in inputs):
            problems.append(
                Problem("error", "empty-row", f"every input column is empty: {inputs}", row)
            )
        for col in m.labels:
            value = m.frame.at[row, col]
            if value is None:
                problems.append(Problem("error", "empty-label", "the label is empty", row, col))
            elif classes is not None and value not in classes:
                problems.append(
                    Problem(
                        "error",
                        "unknown-label",
                        f"label {value!r} is not one of the {len(classes)} known classes",
                        row,
                        col,
                    )
                )
    return problems


def _single_sample_classes(m: Manifest) -> list[Problem]:
    problems = []
    for col in m.labels:
        counts = Counter(v for v in m.frame[col] if v is not None)
        for row, value in enumerate(m.frame[col]):
            if value is not None and counts[value] == 1:
                problems.append(
                    Problem(
                        "warning",
                        "single-sample-class",
                        f"class {value!r} has a single sample: it cannot be both trained "
                        "on and evaluated",
                        row,
                        col,
                    )
                )
    return problems


def _duplicate_rows(m: Manifest) -> list[Problem]:
    # Identical rows usually mean a manifest was concatenated twice.
    relevant = [c for c, r in m.roles.items() if r != "ignore"]
    problems = []
    first_seen: dict[tuple, int] = {}
    for row, key in enumerate(m.frame[relevant].itertuples(index=False, name=None)):
        if key in first_seen:
            problems.append(
                Problem("warning", "duplicate-row", f"same as row {first_seen[key]}", row)
            )
        else:
            first_seen[key] = row
    return problems


class _MemoryGate:
    """Lets decodes through while the bytes they hold together stay within `capacity`."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.held = 0
        self.changed = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int):
        with self.changed:
            # One decode larger than the whole capacity still runs, on its own.
            self.changed.wait_for(lambda: self.held == 0 or self.held + nbytes <= self.capacity)
            self.held += nbytes
        try:
            yield
        finally:
            with self.changed:
                self.held -= nbytes
                self.changed.notify_all()


# What a check holds at its peak beyond the picture itself: audio is read in 64 Ki-frame blocks;
# a video check keeps 3 RGB frames and the decoder a few YUV ones (1.5 bytes a pixel).
_AUDIO_CHECK_BYTES = 1 << 24
_VIDEO_BYTES_PER_PIXEL = 3 * 3 + 4 * 1.5
_DRAFT = 64  # JPEGs are checked decoded at the reduced scale nearest 64 pixels a side


# glibc keeps what a thread frees in that thread's own arena: without a trim after a large
# decode, the process keeps one decode's worth per worker thread, however few ran at once.
_TRIM_BYTES = 1 << 26
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def _give_back_freed_memory() -> None:
    trim = getattr(_LIBC, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


def _decode_bytes(modality: str, path: str) -> int:
    """The bytes checking this file may hold at once, from its header alone."""
    if modality == "image":
        w, h = image_size(path)
        if sniff(path)[1] == "JPEG":  # draft decoding divides each side by up to 8
            scale = max(s for s in (1, 2, 4, 8) if s == 1 or min(w, h) // s >= _DRAFT)
            w, h = -(-w // scale), -(-h // scale)
        return w * h * DECODE_BYTES_PER_PIXEL
    if modality == "video":
        w, h = frame_size(path)
        return int(w * h * _VIDEO_BYTES_PER_PIXEL)
    if modality == "audio":
        return _AUDIO_CHECK_BYTES
    # text: read whole, up to its own size limit (a missing file is reported by the read)
    return os.path.getsize(path) if os.path.isfile(path) else 0


def _check_file(
    modality: str, path: str, t: Thresholds, budgets: Budgets, gate: _MemoryGate
) -> list[tuple[str, str, str]]:
    """(severity, reason, message) for one file; empty when it is fine."""
    try:
        cost = _decode_bytes(modality, path)
        with gate.hold(cost):
            try:
                if modality == "image":
                    return _check_image(path, t, budgets)
                if modality == "audio":
                    return _check_audio(path, t, budgets)
                if modality == "video":
                    return _check_video(path, t, budgets)
                text = read_text(path)
                return [] if text else [("warning", "empty-text", "the text file is empty")]
            finally:
                if cost >= _TRIM_BYTES:
                    _give_back_freed_memory()
    except MediaError as e:
        return [("error", e.reason, e.detail or str(e))]


def _check_image(path: str, t: Thresholds, budgets: Budgets) -> list[tuple[str, str, str]]:
    w, h = image_size(path)
    # A full decode (at a reduced JPEG scale) is what catches truncated files.
    read_image(path, draft_size=(_DRAFT, _DRAFT), budgets=budgets)
    if min(w, h) < t.min_image_side:
        return [("warning", "tiny-image", f"{w}×{h} pixels is under {t.min_image_side} a side")]
    return []


def _check_audio(path: str, t: Thresholds, budgets: Budgets) -> list[tuple[str, str, str]]:
    stats = audio_stats(path, budgets=budgets)
    found = []
    if stats.seconds < t.min_audio_seconds:
        found.append(("warning", "short-audio", f"only {stats.seconds:.3f} s long"))
    level = 20 * math.log10(max(stats.rms, 1e-12))
    if level < t.silence_dbfs:
        found.append(("warning", "near-silent", f"RMS level {level:.1f} dBFS"))
    return found


def _check_video(path: str, t: Thresholds, budgets: Budgets) -> list[tuple[str, str, str]]:
    info = probe_video(path, budgets=budgets)
    if info.truncated:
        return [
            (
                "error",
                "truncated",
                f"only {info.decodable_frames} of the {info.frame_count} frames its header "
                "promises can be read",
            )
        ]
    # First, middle and last frames: catches damage the demuxer alone does not see.
    read_video(path, num_frames=3, budgets=budgets)
    if t.clip_seconds is not None and info.duration < t.clip_seconds:
        return [
            (
                "warning",
                "short-video",
                f"{info.duration:.2f} s is shorter than the {t.clip_seconds} s clip length",
            )
        ]
    return []


def summarize(problems: list[Problem]) -> dict[str, int]:
    """Counts for the last line of a report: errors, warnings and rows affected."""
    return {
        "errors": sum(p.severity == "error" for p in problems),
        "warnings": sum(p.severity == "warning" for p in problems),
        "rows_with_errors": len({p.row for p in problems if p.severity == "error"}),
    }
