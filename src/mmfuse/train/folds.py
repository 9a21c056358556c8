"""Members trained on folds: k-fold bagging, as AutoGluon's `num_bag_folds`.

With `--ensemble folds=K` the training and validation rows are pooled and split into K
stratified folds; each member is trained K times, each time on K - 1 folds with the fold left
out as its validation split (best epoch and calibration), and the member becomes the bag of
those K models (their mean probability). Every pooled row is then predicted once by the model
that did not see it: the out-of-fold predictions, on which the ensemble's weights and its
temperature are chosen. A validation split of a few dozen rows cannot rank members (one row
is several points), and one cut from elsewhere than the test rows ranks them wrongly; the
out-of-fold rows are every row the user gave, and every member's model also trains on more of
them.

Each fold model is an ordinary `train_model` run in `members/<member>/members/fold<k>/`; when
it is done, its folder gets the model and `oof.npz` (its fold's predictions at T = 1 and its
temperature), so a resumed run loads finished folds and predicts nothing again.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mmfuse.data.manifest import Manifest
from mmfuse.evaluate.calibration import untempered
from mmfuse.model.config import ConfigError, ModelConfig
from mmfuse.model.ensemble import EnsembleModel
from mmfuse.model.ensemble_folder import MEMBERS, build_ensemble
from mmfuse.model.saved import CONFIG, load_model, save_model
from mmfuse.train.checkpoint import remove_checkpoints
from mmfuse.train.decoded_cache import write_atomic
from mmfuse.train.parallel import in_processes, quiet, silent
from mmfuse.train.run import train_model

OOF = "oof.npz"


@dataclass
class Bag:
    """A member trained on folds: the bag of its fold models, the config it presents, and its
    out-of-fold probabilities over the pooled rows (`{task: N×C}`, calibrated and at T = 1)."""

    model: EnsembleModel
    config: ModelConfig
    proba: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]  # -1 where the row has no label or its fold could not read it
    history: list[dict]


def pool_rows(train: Manifest, val: Manifest | None) -> Manifest:
    """The training and validation rows as one manifest (paths are absolute already)."""
    if val is None:
        return train
    for label in train.labels:
        known = set(train.classes[label])
        for row, value in enumerate(val.column_values(label)):
            if value is not None and str(value) not in known:
                raise ConfigError(
                    f"{val.source} row {row}: class {value!r} of {label!r} is not in the "
                    "training rows, and folds pool both; add rows of it to the training data, "
                    "or drop that row"
                )
    # A column the validation table lacks is missing in its rows (None), as a cell would be.
    frame = pd.concat(
        [train.frame, val.frame.reindex(columns=train.frame.columns)], ignore_index=True
    )
    return replace(
        train,
        frame=frame,
        source=f"{train.source} + {val.source}",
        text_files=train.text_files | val.text_files,
    )


def fold_rows(
    manifest: Manifest, folds: int, seed: int, groups: str | None = None
) -> list[np.ndarray]:
    """Each fold's held-out rows, stratified by the first label (as far as each class has
    rows: a class rarer than `folds` is missing from some folds), shuffled from `seed`.
    `groups`: a column whose rows with one value (a speaker, a recording, a photograph) stay in
    one fold, so no fold model is scored on rows nearly the same as rows it trained on."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    n = len(manifest)
    if folds < 2 or folds > n:
        raise ConfigError(
            f"ensemble folds={folds} with {n} rows; give 2 <= folds <= the number of rows"
        )
    y = manifest.frame[manifest.label].astype(str).to_numpy() if manifest.label else np.zeros(n)
    largest = int(pd.Series(y).value_counts().max())
    if largest < folds:
        raise ConfigError(
            f"ensemble folds={folds}: no class has {folds} rows (the largest has {largest}), "
            f"so the folds cannot be stratified; give folds={largest} or fewer"
        )
    if groups is None:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        by = None
    else:
        by = _group_values(manifest, groups, folds)
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has fewer members than folds"
        warnings.simplefilter("ignore", UserWarning)
        return [held for _, held in splitter.split(np.zeros(n), y, by)]


def _group_values(manifest: Manifest, column: str, folds: int) -> np.ndarray:
    """The group of each row; a row without a value is a group of its own."""
    if column not in manifest.frame.columns:
        raise ConfigError(
            f"ensemble groups={column}: no such column in {manifest.source} (columns: "
            f"{', '.join(map(str, manifest.frame.columns))}); name the column that groups the rows"
        )
    values = [
        f"row {i}" if v is None else f"value {v}"
        for i, v in enumerate(manifest.column_values(column))
    ]
    count = len(set(values))
    if count < folds:
        raise ConfigError(
            f"ensemble groups={column}: {count} groups cannot fill {folds} folds; give "
            f"folds={count} or fewer"
        )
    return np.array(values)


def plan_id(pool: Manifest, held_out: list[np.ndarray]) -> str:
    """A hash of the pooled rows (their order too) and of the folds cut from them: a resumed
    fold must have been trained on these very rows and folds, as its saved row numbers point
    into them."""
    values = pd.util.hash_pandas_object(pool.frame.astype(str), index=False).to_numpy()
    digest = hashlib.sha256(values.tobytes())
    for held in held_out:
        digest.update(np.asarray(held, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()[:16]


def _rows(manifest: Manifest, rows: np.ndarray) -> Manifest:
    return replace(manifest, frame=manifest.frame.iloc[rows].reset_index(drop=True))


def train_bags(
    pool: Manifest,
    members: Sequence,
    held_out: list[np.ndarray],
    out_dir: Path,
    *,
    resume: bool,
    jobs: int = 1,
    log: Callable[[str], None],
) -> dict[str, Bag]:
    """`{member: Bag}`: each member (a `train.ensemble.Member`) trained once per fold in
    `out_dir/members/<member>/members/fold<k>/` (resuming: finished folds are loaded), `jobs`
    fold models at a time, each in a process of its own with its share of the threads."""
    plan = plan_id(pool, held_out)
    todo = []
    for m in members:
        for k in range(len(held_out)):
            fold_dir = _fold_dir(out_dir, m, k)
            if resume and (fold_dir / CONFIG).is_file() and (fold_dir / OOF).is_file():
                _check_same_rows(fold_dir, plan)
                log(f"{m.name} fold{k}/{len(held_out)}: done before, loaded from {fold_dir}")
            else:
                todo.append((m, k))
    histories: dict[str, list] = {m.name: [] for m in members}
    if jobs > 1 and len(todo) > 1:
        calls = [
            (
                f"{m.name} fold{k}/{len(held_out)}",
                _fold_job,
                (pool, m, k, held_out, plan, out_dir, resume),
            )
            for m, k in todo
        ]
        done = in_processes(jobs, calls, log)
        for (m, _), (name, _, _) in zip(todo, calls):
            histories[m.name] += done[name]
    else:
        for m, k in todo:
            log(
                f"{m.name} fold{k}/{len(held_out)}: training on {len(pool) - len(held_out[k])} rows"
            )
            histories[m.name] += train_fold(pool, m, k, held_out, plan, out_dir, resume, log)
    return {m.name: _bag(len(pool), m, len(held_out), out_dir, histories[m.name]) for m in members}


def _check_same_rows(fold_dir: Path, plan: str) -> None:
    with np.load(fold_dir / OOF, allow_pickle=False) as saved:
        same = "pool" in saved.files and str(saved["pool"]) == plan
    if not same:
        raise ConfigError(
            f"{fold_dir} was trained on other training/validation rows or folds than this run "
            "has now; resume with the same files and --ensemble, or give a new --out"
        )


def _fold_dir(out_dir: Path, member, k: int) -> Path:
    return out_dir / MEMBERS / member.name / MEMBERS / f"fold{k}"


def train_fold(
    pool: Manifest, member, k: int, held_out: list, plan: str, out_dir: Path, resume, log
):
    """Train `member` on every pooled row but fold `k`'s (`held_out[k]`), validated on those;
    write its folder and `oof.npz` (with `plan`, the `plan_id` of the pool and folds); return
    its history (each epoch with `"fold": k`)."""
    fold_dir, held = _fold_dir(out_dir, member, k), held_out[k]
    run = train_model(
        _rows(pool, np.setdiff1d(np.arange(len(pool)), held)),
        member.model_config,
        member.train_config,
        fold_dir,
        val=_rows(pool, held),
        resume=resume,
        evaluate=False,
        log=log,
    )
    _save_fold(fold_dir, run, member, held_out[k], plan)
    return [{"fold": k, **r} for r in run.fit.history]


def _fold_job(pool, member, k, held_out, plan, out_dir, resume) -> list[dict]:
    """`train_fold` in a worker process (`train.parallel`)."""
    member = replace(member, train_config=quiet(member.train_config))
    return train_fold(pool, member, k, held_out, plan, out_dir, resume, silent)


def _bag(n: int, member, folds: int, out_dir: Path, history: list) -> Bag:
    """The bag of `member`'s finished fold models, read from their folders."""
    models, raws, temps, rows = {}, [], [], []
    for k in range(folds):
        fold_dir = _fold_dir(out_dir, member, k)
        models[f"fold{k}"], _, _ = load_model(fold_dir, "cpu")
        tasks = models[f"fold{k}"].tasks
        with np.load(fold_dir / OOF, allow_pickle=False) as saved:  # closes the file
            rows.append(saved["rows"])
            raws.append({t: (saved[f"raw/{t}"], saved[f"label/{t}"]) for t in tasks})
        temps.append(models[f"fold{k}"].temperatures())
    configs = dict.fromkeys(models, member.model_config)
    model, config = build_ensemble(models, configs, dict.fromkeys(models, 1 / len(models)))
    model.member_train = dict.fromkeys(models, member.train_config.to_dict())
    proba, raw, labels = _out_of_fold(n, config, rows, raws, temps)
    return Bag(model, config, proba, raw, labels, history)


def _save_fold(fold_dir: Path, run, member, held: np.ndarray, plan: str) -> None:
    """The fold's model folder and `oof.npz`: its held-out rows (pooled row numbers) that it
    could read, and its probabilities on them at T = 1. Written last: the fold is then done."""
    out = run.trainer.predict(run.val_set)
    arrays = {"rows": held[np.asarray(out["rows"], dtype=np.int64)]}
    temperatures = run.model.temperatures()
    for task, p in out["proba"]["all"].items():
        arrays[f"raw/{task}"] = untempered(p, temperatures.get(task, 1.0)).astype(np.float32)
        arrays[f"label/{task}"] = np.asarray(out["labels"][task], dtype=np.int64)
    arrays["pool"] = np.array(plan)
    save_model(fold_dir, run.model, member.model_config, train_config=member.train_config.to_dict())
    # Renamed into place whole: a fold with oof.npz is done, so it must never be half written.
    write_atomic(fold_dir / OOF, lambda f: np.savez(f, **arrays))
    # Done: a resumed run loads the folder, so its checkpoints (each a copy of every weight,
    # frozen encoders included) are only disk to the K × members fold models.
    remove_checkpoints(fold_dir)


def _out_of_fold(n: int, config: ModelConfig, rows, parts, temps):
    """`(calibrated, at T = 1, labels)` over the `n` pooled rows from each fold's part
    (`{task: (probabilities at T = 1, labels)}`); a row no fold could read is uniform and
    unlabelled."""
    classes = {h.task: len(h.classes) for h in config.heads}
    proba = {t: np.full((n, c), 1 / c) for t, c in classes.items()}
    raw = {t: p.copy() for t, p in proba.items()}
    labels = {t: np.full(n, -1, dtype=np.int64) for t in classes}
    for r, part, temperature in zip(rows, parts, temps):
        for t in classes:
            p, y = part[t]
            raw[t][r], labels[t][r] = p, y
            proba[t][r] = untempered(p, 1.0 / temperature.get(t, 1.0))
    return proba, raw, labels


__all__ = ["OOF", "Bag", "fold_rows", "plan_id", "pool_rows", "train_bags", "train_fold"]
