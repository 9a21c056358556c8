"""A run folder's checkpoints: which is the latest, which the best, and which to prune.

Steps only grow within a run, so latest means highest step. Older checkpoints are pruned only
after the new one is in place, and a pruned folder is first renamed to `.trash-...` so a crash
mid-delete never leaves a half-deleted `ckpt-*` folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mmfuse.errors import CheckpointError
from mmfuse.train import _ckpt_frozen, _ckpt_io
from mmfuse.train._ckpt_format import FOLDER, META_FILE, TAG, read_meta, verify_checkpoint


def latest_checkpoint(
    run_dir: str | os.PathLike, tag: str = "ckpt", *, verify: bool = True
) -> Path | None:
    """The highest-step complete `<tag>-*` checkpoint in `run_dir`, or None if there is none.

    Temp and trash folders are ignored; so are folders without meta.json and, with `verify`,
    those whose files do not match their hashes (the next older one is returned instead).
    """
    for _, path in checkpoints(Path(run_dir), tag):
        try:
            if verify:
                verify_checkpoint(path)
            else:
                read_meta(path)
        except CheckpointError:
            continue
        return path
    return None


def newest_usable(
    run_dir: str | os.PathLike, tag: str = "ckpt"
) -> tuple[Path | None, list[tuple[Path, CheckpointError]]]:
    """The newest `<tag>-*` checkpoint whose files match their hashes, and the newer ones that
    do not, each with the error that says why (for a resume to report, not pass over)."""
    damaged = []
    for _, path in checkpoints(Path(run_dir), tag):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            damaged.append((path, err))
            continue
        return path, damaged
    return None, damaged


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to `<name>.damaged` (kept for inspection, never picked)."""
    target = path.with_name(f"{path.name}.damaged")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged{n}")
    os.replace(path, target)
    _ckpt_io.fsync_dir(path.parent)
    return target


def best_checkpoint(run_dir: str | os.PathLike, *, verify: bool = True) -> Path | None:
    """The checkpoint last passed to `mark_best` (or saved with tag="best"), or None."""
    return latest_checkpoint(run_dir, "best", verify=verify)


def mark_best(checkpoint: str | os.PathLike, *, tag: str = "best", verify: bool = True) -> Path:
    """Make `checkpoint` the run's best: hard-link its files into `<tag>-<step>/` beside it.

    Hard links cost no space or copy time and survive the pruning of the original (the
    files are never modified in place); where links are not supported the files are copied.
    Only the newest `<tag>-*` folder is kept. Returns the new folder. `verify=False` skips
    rehashing the files, for a checkpoint this process has just written.
    """
    if not TAG.fullmatch(tag):
        raise ValueError(f"tag={tag!r}: use lowercase letters, digits and _ (e.g. 'best')")
    source = Path(checkpoint)
    meta = verify_checkpoint(source) if verify else read_meta(source)
    run_dir = source.parent
    final = run_dir / f"{tag}-{meta['step']:08d}"
    if final.resolve() == source.resolve():
        return final
    tmp = run_dir / _ckpt_io.scratch_name("tmp", final.name)
    tmp.mkdir()
    try:
        for name in [*meta["files"], META_FILE]:  # meta.json last, as in save_checkpoint
            try:
                os.link(source / name, tmp / name)
            except OSError:
                shutil.copy2(source / name, tmp / name)
                _ckpt_io.fsync_file(tmp / name)
        _ckpt_io.fsync_dir(tmp)
        _ckpt_io.move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(run_dir, tag, 1, final)
    return final


def checkpoints(run_dir: Path, tag: str) -> list[tuple[int, Path]]:
    """(step, folder) of every `<tag>-<step>` folder, highest step first, complete or not."""
    # Only exact `<tag>-<digits>` names, so dot-folders never match.
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = FOLDER.fullmatch(child.name)
        if match and match["tag"] == tag and child.is_dir():
            found.append((int(match["step"]), child))
    return sorted(found, key=lambda item: item[0], reverse=True)


def prune(run_dir: Path, tag: str, keep: int, newest: Path) -> None:
    """Keep `newest` and the `keep - 1` next complete `<tag>-*` checkpoints; remove the rest."""
    kept = 1  # `newest`, known good: it was just written
    for _, path in checkpoints(run_dir, tag):
        if path == newest:
            continue
        if kept < keep and _looks_complete(path):
            kept += 1
            continue
        # Renamed first so a crash mid-delete leaves an ignored dot-folder, not a half ckpt.
        trash = run_dir / _ckpt_io.scratch_name("trash", path.name)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    in_use = _frozen_in_use(run_dir)
    if in_use is not None:
        _ckpt_frozen.remove_unreferenced(run_dir, in_use)
    _ckpt_io.fsync_dir(run_dir)
    _ckpt_io.remove_abandoned_scratch(run_dir)


def _frozen_in_use(run_dir: Path) -> set[str] | None:
    """The frozen files that the run's checkpoint folders (any tag) name; None when a
    meta.json could not be read, so that nothing is deleted on a guess (a passing I/O error
    would otherwise take the file of a good checkpoint, even the one just written)."""
    names = set()
    for child in run_dir.iterdir():
        if not (FOLDER.fullmatch(child.name) and (child / META_FILE).is_file()):
            continue
        try:
            meta = read_meta(child)
        except CheckpointError:
            return None
        if "frozen" in meta:
            names.add(meta["frozen"]["file"])
    return names


def remove_all(run_dir: Path) -> None:
    """Remove every checkpoint folder of `run_dir` (any tag): a run whose model folder is
    written and will not be resumed (a finished fold model) needs none of them."""
    for child in list(run_dir.iterdir()) if run_dir.is_dir() else []:
        if FOLDER.fullmatch(child.name) and child.is_dir():
            trash = run_dir / _ckpt_io.scratch_name("trash", child.name)
            os.replace(child, trash)
            shutil.rmtree(trash, ignore_errors=True)
    _ckpt_frozen.remove_unreferenced(run_dir, set())
    _ckpt_io.remove_abandoned_scratch(run_dir)


def _looks_complete(path: Path) -> bool:
    # Sizes only: hashing every kept checkpoint on every save would re-read gigabytes.
    try:
        meta = read_meta(path)
    except CheckpointError:
        return False
    return all(
        (path / name).is_file() and (path / name).stat().st_size == info["bytes"]
        for name, info in meta["files"].items()
    ) and ("frozen" not in meta or _ckpt_frozen.looks_complete(path, meta["frozen"]))
