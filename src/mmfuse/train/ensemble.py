"""Train an ensemble: members one after another, weights on validation, one evaluation.

Each member is an ordinary run of `train_model` in `out_dir/members/<name>/` (checkpoints,
calibration on the validation split, its model folder written when it is done), so a killed
ensemble resumed with `resume=True` loads the finished members, goes on with the member it was
training from its last checkpoint, and trains the rest. Then each member predicts the
validation split, bagged greedy selection (`train.selection`) weighs them where those rows can
tell (else equal weights), the ensemble's own temperature is fitted on the mix of selected
weights, and the ensemble is evaluated on `test` (else `val`) with each member's scores beside
its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mmfuse.data.manifest import Manifest
from mmfuse.errors import MmfuseError
from mmfuse.evaluate.calibration import fit_temperature, untempered
from mmfuse.evaluate.evaluation import evaluate_model, evaluate_probabilities
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.infer.engine import PredictOptions, predict_dataset
from mmfuse.model.config import ModelConfig
from mmfuse.model.ensemble import EnsembleModel
from mmfuse.model.ensemble_folder import MEMBERS, build_ensemble
from mmfuse.model.saved import CONFIG, load_model, save_model
from mmfuse.train.config import TrainConfig
from mmfuse.train.folds import Bag, fold_rows, pool_rows, train_bags
from mmfuse.train.parallel import in_processes, quiet, silent
from mmfuse.train.run import train_model
from mmfuse.train.selection import bagged_weights


@dataclass
class Member:
    """A member to train: its name, model and training configs."""

    name: str
    model_config: ModelConfig
    train_config: TrainConfig


@dataclass
class EnsembleRun:
    model: EnsembleModel
    config: ModelConfig  # the ensemble's inputs and heads
    member_configs: dict[str, ModelConfig]
    histories: dict[str, list[dict]]
    validation: dict  # {"metric", "members": {name: score}, "ensemble": score}
    evaluation: dict | None
    report: Path | None


def train_members(
    train: Manifest,
    val: Manifest | None,
    members: Sequence[Member],
    out_dir: Path,
    *,
    resume: bool,
    jobs: int = 1,
    log: Callable[[str], None],
) -> tuple[dict, dict]:
    """`({name: trained model}, {name: history})`, each member trained (or, resuming, loaded
    when its folder is complete) in `out_dir/members/<name>/`, `jobs` at a time."""
    histories: dict[str, list] = {m.name: [] for m in members}
    todo = []
    for i, m in enumerate(members, start=1):
        folder = out_dir / MEMBERS / m.name
        if resume and (folder / CONFIG).is_file():
            log(f"member {i}/{len(members)} {m.name}: done before, loaded from {folder}")
        else:
            todo.append((i, m))
    if jobs > 1 and len(todo) > 1:
        calls = [(m.name, _member_job, (train, val, m, out_dir, resume)) for _, m in todo]
        histories |= in_processes(jobs, calls, log)
    else:
        for i, m in todo:
            log(f"member {i}/{len(members)} {m.name}: training")
            histories[m.name] = train_member(train, val, m, out_dir, resume, log)
    models = {m.name: load_model(out_dir / MEMBERS / m.name, "cpu")[0] for m in members}
    return models, histories


def train_member(train, val, member: Member, out_dir: Path, resume: bool, log) -> list[dict]:
    """Train `member` in `out_dir/members/<name>/` and write its model folder there (last: a
    member folder with config.json is a finished member); return its history."""
    folder = out_dir / MEMBERS / member.name
    run = train_model(
        train,
        member.model_config,
        member.train_config,
        folder,
        val=val,
        resume=resume,
        evaluate=False,
        log=log,
    )
    save_model(folder, run.model, member.model_config, train_config=member.train_config.to_dict())
    return run.fit.history


def _member_job(train, val, member: Member, out_dir: Path, resume: bool) -> list[dict]:
    """`train_member` in a worker process (`train.parallel`)."""
    member = replace(member, train_config=quiet(member.train_config))
    return train_member(train, val, member, out_dir, resume, silent)


def ensemble_dataset(manifest: Manifest, model: EnsembleModel, config: ModelConfig, seed: int):
    """`manifest` as the ensemble's evaluation samples (each input preprocessed once)."""
    return MultimodalDataset(
        manifest,
        config.inputs,
        {n: e.input_spec for n, e in model.encoders.items()},
        {h.task: h.classes for h in config.heads},
        train=False,
        seed=seed,
    )


def member_probas(model: EnsembleModel, data: MultimodalDataset, options: PredictOptions):
    """`({member: {task: N×C}}, {task: labels})`: each member's own prediction of `data`."""
    probas, labels = {}, {}
    for name in model.members:
        out = predict_dataset(model.only(name), data, options)
        probas[name], labels = out["proba"]["all"], out["labels"]
    return probas, labels


def choose_weights(
    model: EnsembleModel,
    probas: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    metric: str,
    *,
    calibrate: bool,
    seed: int = 0,
    log: Callable[[str], None],
    rows: str = "validation",
    how: str = "auto",
) -> dict:
    """Set `model`'s weights and, when `calibrate` and they are selected, its temperature from
    the members' `probas` of held-out rows; returns the scores on those rows `{"metric",
    "members", "ensemble", "weighing", "shrink", "rows", "why"}`.

    `how`: "selected" (bagged greedy selection, bootstraps drawn from `seed`, and a temperature
    fitted to the mix), "equal", or "auto": selected where the rows can tell (`_weigh`), else
    equal weights. Equal weights leave the ensemble's own temperature at 1 (each member keeps
    its own): fitted to the mix of members that chose their epoch and temperature on these
    very rows, it sharpened them on real tasks and cost test log loss (docs/ensembles.md)."""
    from mmfuse.train.selection import score

    task = model.tasks[0]
    y = labels[task]
    keep = y >= 0
    weighing, weights, shrink, why = _weigh(probas, labels, metric, how, seed)
    model.weights = weights
    mix = {t: sum(w * probas[n][t] for n, w in weights.items()) for t in model.tasks}
    if calibrate and weighing == "selected":
        model.set_temperatures({t: fit_temperature(labels[t], mix[t]) for t in model.tasks})
    scores = {n: score(metric, y[keep], probas[n][task][keep]) for n in model.members}
    ens = score(metric, y[keep], mix[task][keep])
    shown = ", ".join(f"{n} {w:.2f}" for n, w in weights.items())
    log(f"ensemble weights ({metric} on {rows}, {why}): {shown}")
    return {
        "metric": metric,
        "members": scores,
        "ensemble": ens,
        "weighing": weighing,
        "shrink": shrink,
        "rows": rows,
        "why": why,
    }


def _weigh(probas, labels, metric: str, how: str, seed: int) -> tuple[str, dict, float, str]:
    """`(weighing, weights, shrink toward equal weights, why)` for `choose_weights`' `how`.

    "auto" keeps the selected weights only on `MIN_ROWS_TO_SELECT` labelled rows or more and
    when they beat equal weights there by `MIN_GAIN_SE` standard errors: the members chose their
    epoch and temperature on these rows, so which member looks best is partly that choice's
    luck, and weights fitted to it lost to equal weights on test wherever their gain was
    smaller (real tasks of 30 to 340 rows; docs/ensembles.md)."""
    from mmfuse.train.selection import MIN_GAIN_SE, MIN_ROWS_TO_SELECT, gain_in_se

    equal = dict.fromkeys(probas, 1 / len(probas))
    if how == "equal":
        return "equal", equal, 1.0, "equal weights, as asked"
    labelled = min(int((np.asarray(v) >= 0).sum()) for v in labels.values())
    if how == "auto" and labelled < MIN_ROWS_TO_SELECT:
        why = f"{labelled} labelled rows, fewer than {MIN_ROWS_TO_SELECT} to select on"
        return "equal", equal, 1.0, f"equal weights: {why}"
    selection = bagged_weights(probas, labels, metric, seed=seed)
    text = _selection_text(selection.shrink)
    if how == "selected":
        return "selected", selection.weights, selection.shrink, text
    gain = gain_in_se(probas, labels, selection.weights, metric, seed=seed)
    if gain < MIN_GAIN_SE:
        why = f"selection's gain over them {gain:.1f} standard errors, under {MIN_GAIN_SE:g}"
        return "equal", equal, 1.0, f"equal weights: {why}"
    better = f"{gain:.1f} standard errors better than equal weights"
    return "selected", selection.weights, selection.shrink, f"{text}, {better}"


def _selection_text(shrink: float) -> str:
    return f"bagged selection, {shrink:.0%} toward equal weights"


def train_ensemble(
    train: Manifest,
    members: Sequence[Member],
    out_dir: str | Path,
    *,
    val: Manifest | None = None,
    test: Manifest | None = None,
    metric: str = "log_loss",
    folds: int = 0,
    jobs: int = 1,
    groups: str | None = None,
    weights: str = "auto",
    resume: bool = False,
    evaluate: bool = True,
    ablation: bool = True,
    robustness: bool = False,
    log: Callable[[str], None] = print,
) -> EnsembleRun:
    """Train `members`, weigh them on `val` (`weights`: `choose_weights`' `how`; without `val`
    equally), evaluate the ensemble on `test` (else `val`), report into `out_dir`. `folds`,
    `jobs`, `groups`: bagged members (`train.folds`), the report on `test` else out of fold."""
    out_dir = Path(out_dir)
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise MmfuseError(f"ensemble member names {names} repeat; name each member once")
    first = members[0].train_config
    options = PredictOptions(batch_size=first.batch_size, workers=first.workers, seed=first.seed)
    weigh = dict(metric=metric, calibrate=first.calibrate, seed=first.seed, log=log, how=weights)
    bags, models, configs, histories = _train(
        train, val, members, out_dir, folds=folds, groups=groups, resume=resume, jobs=jobs, log=log
    )
    model, config = build_ensemble(models, configs, dict.fromkeys(names, 1 / len(names)))
    validation: dict = {"metric": metric, "weights": "uniform (no validation split)"}
    if bags is not None:
        labels = _common_labels(bags)
        probas = {n: b.proba for n, b in bags.items()}
        validation = choose_weights(model, probas, labels, **weigh, rows="out-of-fold rows")
    elif val is not None:
        val_set = ensemble_dataset(val, model, config, first.seed)
        validation = choose_weights(model, *member_probas(model, val_set, options), **weigh)
    evaluation = None
    if evaluate:
        extra = {"members": len(names), "selection": _validation_text(validation)}
        target = test if test is not None else (None if bags else val)
        if target is not None:
            data = ensemble_dataset(target, model, config, first.seed)
            title = f"mmfuse ensemble: {target.source}"
            kwargs = dict(options=options, ablation=ablation, robustness=robustness, log=log)
            evaluation = evaluate_model(model, data, out_dir, title=title, extra=extra, **kwargs)
        elif bags is not None:
            evaluation = _out_of_fold_report(model, config, bags, labels, out_dir, extra)
    report = out_dir / "report.md" if evaluation is not None else None
    return EnsembleRun(model, config, configs, histories, validation, evaluation, report)


def _train(train, val, members, out_dir: Path, *, folds, groups, resume: bool, jobs: int, log):
    """`(bags or None, {name: model}, {name: its ModelConfig}, {name: history})`."""
    if not folds:
        models, histories = train_members(
            train, val, members, out_dir, resume=resume, jobs=jobs, log=log
        )
        return None, models, {m.name: m.model_config for m in members}, histories
    pool = pool_rows(train, val)
    held_out = fold_rows(pool, folds, members[0].train_config.seed, groups)
    log(f"{folds}-fold bagging over {len(pool)} rows (training and validation pooled)")
    bags = train_bags(pool, members, held_out, out_dir, resume=resume, jobs=jobs, log=log)
    models = {n: b.model for n, b in bags.items()}
    configs = {n: b.config for n, b in bags.items()}
    return bags, models, configs, {n: b.history for n, b in bags.items()}


def _common_labels(bags: Mapping[str, Bag]) -> dict[str, np.ndarray]:
    """Labels of the rows every bag predicted out of fold (-1 elsewhere: left out)."""
    parts = [b.labels for b in bags.values()]
    everywhere = {t: np.all([p[t] >= 0 for p in parts], axis=0) for t in parts[0]}
    return {t: np.where(kept, parts[0][t], -1) for t, kept in everywhere.items()}


def _out_of_fold_report(model: EnsembleModel, config, bags, labels, out_dir: Path, extra):
    """The report of the ensemble's and its members' out-of-fold predictions (`labels`: the
    rows every bag predicted, `_common_labels`)."""
    w = model.weights
    tasks = {h.task: h.classes for h in config.heads}
    t_own = model.temperatures()
    mix = {t: sum(w[n] * b.proba[t] for n, b in bags.items()) for t in tasks}
    proba = {t: untempered(mix[t], 1.0 / t_own.get(t, 1.0)) for t in tasks}
    raw = {t: sum(w[n] * b.raw[t] for n, b in bags.items()) for t in tasks}
    return evaluate_probabilities(
        proba,
        labels,
        tasks,
        t_own,
        out_dir,
        raw=raw,
        members={n: b.proba for n, b in bags.items()},
        members_raw={n: b.raw for n, b in bags.items()},
        weights=w,
        title="mmfuse ensemble: out-of-fold predictions of the training and validation rows",
        extra=extra,
    )


def _validation_text(validation: Mapping) -> str:
    if "members" not in validation:
        return str(validation.get("weights"))
    members = ", ".join(f"{n} {s:.4f}" for n, s in validation["members"].items())
    rows = validation.get("rows", "validation")
    return f"{validation['metric']} on {rows}: members {members}; ensemble " + (
        f"{validation['ensemble']:.4f} ({validation['why']})"
    )


__all__ = ["EnsembleRun", "Member", "train_ensemble"]
