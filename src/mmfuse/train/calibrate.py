"""Temperature scaling after training: one T per task, fitted on the validation split."""

from __future__ import annotations

from collections.abc import Callable

from mmfuse.evaluate.calibration import fit_temperature


def calibrate_model(
    model,
    predict: Callable[[object], dict],
    val_set,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Fit and set `model`'s per-task temperatures on `val_set`, predicted by `predict`
    (`Trainer.predict`, or `predict_dataset` with options); returns `{task: T}`.

    The model predicts at T = 1 first, so a model calibrated before is fitted afresh."""
    model.set_temperatures(dict.fromkeys(model.tasks, 1.0))
    out = predict(val_set)
    temperatures = {
        task: fit_temperature(out["labels"][task], out["proba"]["all"][task])
        for task in model.tasks
    }
    model.set_temperatures(temperatures)
    if log is not None:
        shown = ", ".join(f"{task} {t:.3f}" for task, t in temperatures.items())
        log(f"calibration: temperature per task on the validation split: {shown}")
    return temperatures
