"""`mmfuse demo`: does fusion beat each single modality? Measured on avdigits, in minutes.

Trains five small models from scratch on the same generated splits and scores them on the test
split: image only, audio only, video frames only, the frames plus the audio track of the same
video file, and all four columns fused with attention. Every run folder is a model folder (the
best checkpoint's weights, its config, its report), so `mmfuse serve`, `predict` and `evaluate`
take any of them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from mmfuse.data.avdigits import ensure_avdigits
from mmfuse.data.manifest import read_manifest
from mmfuse.model.config import FusionConfig, HeadConfig, InputConfig, ModelConfig
from mmfuse.model.saved import save_model
from mmfuse.train.config import TrainConfig
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
        workers=2,
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
    for name in runs or list(RUNS):
        inputs = RUNS[name]
        config = ModelConfig(inputs=inputs, heads=heads, fusion=FusionConfig("attention", 64))
        log(f"training: {name}")
        run_dir = out_dir / _slug(name)
        shutil.rmtree(run_dir, ignore_errors=True)  # a demo run always starts fresh
        t0 = time.perf_counter()
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
        save_model(
            run_dir, run.model, config, train_config=train_config.to_dict(), report_dir=run_dir
        )
        metrics = run.evaluation["metrics"]
        results[name] = {
            "accuracy": metrics["accuracy"],
            "f1_macro": metrics["f1_macro"],
            "train_time": time.perf_counter() - t0,
            "epochs": len(run.fit.history),
            "report": str(run.report),
            "model": str(run_dir),
        }
        log(f"  test accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['f1_macro']:.3f}")
        log(f"  model folder: {run_dir} (try: mmfuse serve {run_dir})")
    log("")
    log(format_results(results))
    log(
        f"\ntotal {time.perf_counter() - started:.0f} s; model folders and reports under {out_dir}/"
    )
    return results


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
