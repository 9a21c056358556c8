"""`mmfuse demo`: does fusion beat each single modality? Measured on avdigits, in minutes.

Trains five small models from scratch on the same generated splits and scores them on the test
split: image only, audio only, video frames only, the frames plus the audio track of the same
video file, and all four columns fused with attention; then an ensemble of three fused models
(attention, gated and late fusion) weighted on the validation split. Every run folder is a model
folder (the best checkpoint's weights, its config, its report), so `mmfuse serve`, `predict` and
`evaluate` take any of them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from mmfuse.data.avdigits import ensure_avdigits
from mmfuse.data.manifest import read_manifest
from mmfuse.model.config import FusionConfig, HeadConfig, InputConfig, ModelConfig
from mmfuse.model.ensemble_folder import save_ensemble
from mmfuse.model.saved import save_model
from mmfuse.train.config import TrainConfig
from mmfuse.train.ensemble import Member, train_ensemble
from mmfuse.train.run import train_model

DEMO_SAMPLES = 1500

# Small from-scratch encoders sized for avdigits (48 px images, 1 s of 16 kHz audio).
IMAGE = ("cnn", {"width": 24, "stages": 3, "image_size": 48})
AUDIO = ("mel-cnn", {"width": 24, "stages": 3, "n_mels": 40})
VIDEO = (
    "frames",
    {"image": "cnn", "image_options": {"width": 16, "stages": 3, "image_size": 48}, "frames": 4},
)
TEXT = ("embedding-bag", {"dim": 32, "vocab_size": 4096})


def _input(column: str, modality: str, spec: tuple[str, dict]) -> InputConfig:
    return InputConfig(column, modality, spec[0], dict(spec[1]))


RUNS: dict[str, dict[str, InputConfig]] = {
    "image only": {"image": _input("image", "image", IMAGE)},
    "audio only": {"audio": _input("audio", "audio", AUDIO)},
    "video only (frames)": {"video": _input("video", "video", VIDEO)},
    "video frames + its audio track": {
        "video": _input("video", "video", VIDEO),
        "video_audio": _input("video", "audio", AUDIO),
    },
    "fused (image+audio+video+text)": {
        "image": _input("image", "image", IMAGE),
        "audio": _input("audio", "audio", AUDIO),
        "video": _input("video", "video", VIDEO),
        "text": _input("text", "text", TEXT),
    },
}


ENSEMBLE = "ensemble of 3 fused (attention, gated, late)"
ENSEMBLE_FUSIONS = ("attention", "gated", "late")


def demo_train_config(epochs: int = 6) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=32,
        lr=3e-3,
        weight_decay=0.05,
        warmup_epochs=0.5,
        patience=3,
        monitor="val_accuracy",
        # avdigits already distorts every sample; ImageNet-style crops and flips would only
        # destroy digits (a flipped 2 is no 2), and a cropped spoken word loses its digit.
        augment=False,
        workers="auto",
        progress=False,
        tensorboard=False,
    )


def run_demo(
    out_dir: str | Path | None = None,
    samples: int | None = None,
    *,
    epochs: int = 6,
    runs: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Generate avdigits if needed, train and test every run; return `{run: scores}` and print
    the comparison table. Each run's model folder and report go to `out_dir/<run>/` (default
    `mmfuse-demo/`)."""
    out_dir = Path(out_dir) if out_dir is not None else Path("mmfuse-demo")
    samples = samples or DEMO_SAMPLES
    started = time.perf_counter()
    log(f"avdigits ({samples} samples): generating if not cached ...")
    paths = ensure_avdigits(samples=samples, seed=0)
    train, val, test = (read_manifest(paths[s]) for s in ("train", "val", "test"))
    heads = [HeadConfig("label", train.classes["label"])]
    results: dict[str, dict] = {}
    for name in runs or [*RUNS, ENSEMBLE]:
        log(f"training: {name}")
        run_dir = out_dir / _slug(name)
        shutil.rmtree(run_dir, ignore_errors=True)  # a demo run always starts fresh
        t0 = time.perf_counter()
        splits = (train, val, test)
        if name == ENSEMBLE:
            results[name] = _ensemble_run(splits, heads, run_dir, demo_train_config(epochs))
        else:
            results[name] = _single_run(splits, RUNS[name], heads, run_dir, epochs)
        results[name]["train_time"] = time.perf_counter() - t0
        r = results[name]
        log(f"  test accuracy {r['accuracy']:.3f}, macro-F1 {r['f1_macro']:.3f}")
        log(f"  model folder: {run_dir} (try: mmfuse serve {run_dir})")
    log("")
    log(format_results(results))
    log(
        f"\ntotal {time.perf_counter() - started:.0f} s; model folders and reports under {out_dir}/"
    )
    return results


def _single_run(splits, inputs: dict, heads, run_dir: Path, epochs: int) -> dict:
    train, val, test = splits
    config = ModelConfig(inputs=inputs, heads=heads, fusion=FusionConfig("attention", 64))
    train_config = demo_train_config(epochs)
    run = train_model(
        train,
        config,
        train_config,
        run_dir,
        val=val,
        test=test,
        ablation=len(inputs) > 1,
        robustness=False,
        log=lambda message: None,
    )
    # train_model leaves the best checkpoint's weights in run.model.
    save_model(run_dir, run.model, config, train_config=train_config.to_dict(), report_dir=run_dir)
    return _scores(run.evaluation["metrics"], len(run.fit.history), run.report, run_dir)


def _ensemble_run(splits, heads, run_dir: Path, train_config: TrainConfig) -> dict:
    """Three fused members, one per fusion method, weighted on the validation split."""
    train, val, test = splits
    inputs = RUNS["fused (image+audio+video+text)"]
    members = [
        Member(
            f"{f}-seed0",
            ModelConfig(inputs=inputs, heads=heads, fusion=FusionConfig(f, 64)),
            train_config,
        )
        for f in ENSEMBLE_FUSIONS
    ]
    run = train_ensemble(
        train, members, run_dir, val=val, test=test, ablation=False, log=lambda message: None
    )
    train_dict = train_config.to_dict()
    save_ensemble(run_dir, run.model, run.config, train_config=train_dict, report_dir=run_dir)
    epochs = max(len(h) for h in run.histories.values())
    return _scores(run.evaluation["metrics"], epochs, run.report, run_dir)


def _scores(metrics: dict, epochs: int, report, run_dir: Path) -> dict:
    return {
        "accuracy": metrics["accuracy"],
        "f1_macro": metrics["f1_macro"],
        "epochs": epochs,
        "report": str(report),
        "model": str(run_dir),
    }


def format_results(results: dict[str, dict]) -> str:
    lines = [
        "| run | test accuracy | macro-F1 | train time (s) | epochs |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['accuracy']:.3f} | {r['f1_macro']:.3f} | {r['train_time']:.0f} "
            f"| {r['epochs']} |"
        )
    return "\n".join(lines)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")
