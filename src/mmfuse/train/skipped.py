"""Samples that could not be loaded during a fit: noted once each, gathered across ranks,
listed in `skipped.json` and summarised in the log."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from mmfuse import distributed
from mmfuse.distributed import DistInfo
from mmfuse.errors import MmfuseError
from mmfuse.infer.dataset import Skipped


class BadSampleError(MmfuseError):
    """A sample failed to load under `on_bad_sample="error"`."""


def note_skipped(known: list[Skipped], new: Iterable[Skipped], policy: str) -> None:
    """Add the `new` records to `known`, or raise under `on_bad_sample="error"`."""
    for s in new:
        if policy == "error":
            raise BadSampleError(
                f"{s}; fix or remove the file, or set on_bad_sample='skip' to leave such "
                "samples out and report them"
            )
        # A bad file fails again every epoch; report it once.
        if (s.row, s.column) not in {(k.row, k.column) for k in known}:
            known.append(s)


def gather_skipped(skipped: list[Skipped], dist: DistInfo) -> list[Skipped]:
    """Every rank's records, each (row, column) once."""
    if not dist.enabled:
        return skipped
    merged: dict = {}
    for part in distributed.gather(dist, [s.to_dict() for s in skipped]):
        for s in part:
            merged.setdefault((s["row"], s["column"]), s)
    return [Skipped(**s) for s in merged.values()]


def write_skipped(run_dir: Path, skipped: list[Skipped], log: Callable[[str], None]) -> None:
    """`run_dir/skipped.json`, and a summary by stage and reason in the log."""
    path = run_dir / "skipped.json"
    path.write_text(json.dumps([s.to_dict() for s in skipped], indent=2) + "\n")
    if not skipped:
        return
    by_reason: dict[str, int] = {}
    for s in skipped:
        by_reason[f"{s.stage}/{s.reason}"] = by_reason.get(f"{s.stage}/{s.reason}", 0) + 1
    log(
        f"skipped {len(skipped)} sample loads ("
        + ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items()))
        + f"); every one is listed in {path}"
    )
    for s in skipped[:5]:
        log(f"  {s}")
