"""Training throughput: mmfuse's Trainer vs a plain PyTorch loop, and the frozen-feature cache.

    .venv/bin/python benchmarks/training.py [--samples 256] [--repeats 5] [--epochs 2]
    .venv/bin/python benchmarks/training.py --quick        # smoke test, well under a minute

(A) Samples/s of `Trainer.fit` against the textbook loop (DataLoader → forward → cross-entropy
→ backward → AdamW step) on the same image+audio+text model, dataset, collate, batch size and
workers. The Trainer runs with its extras off (no progress bar, TensorBoard, clipping, schedule,
validation or mid-epoch checkpoints). Timed: one training epoch, from creating the loader's
iterator to the last optimiser step, for both (the Trainer's `history[i]["train_time"]`); the
checkpoint the Trainer writes after every epoch is outside that window, and shows in the
"whole fit" columns (wall time of the complete run, set-up and checkpoints included, against
the plain loop's complete run). Each repeat builds a fresh model from the same seed; the two
methods take turns (trainer, plain, trainer, plain, ...) and every epoch of every repeat counts.

(B) Training the fusion and head on top of frozen encoders (resnet18 image, MiniLM text, or an
embedding bag when MiniLM is not installed), with the on-disk feature cache vs without it.
"Epoch 1" is the wall time from calling `fit` to the end of the first epoch, so it includes
filling the cache (which the Trainer does before its first epoch, outside `train_time`); "later
epochs" is the median `train_time` of epochs 2 and on. Each cached run starts from an empty
cache folder. Data are generated into a temporary folder with `make_shapes`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmfuse.data.manifest import read_manifest
from mmfuse.data.synthetic import make_shapes
from mmfuse.infer.batch import collate
from mmfuse.model import FusionConfig, HeadConfig, InputConfig, ModelConfig, MultimodalModel
from mmfuse.train import MultimodalDataset, TrainConfig, Trainer

CLASSES = 4
LR = 1e-3


# ---------------------------------------------------------------------------------- set-up
def make_data(root: Path, samples: int, image_size: int, audio_seconds: float):
    make_shapes(
        root,
        max(2, samples // CLASSES),
        CLASSES,
        modalities=("image", "audio", "text"),
        image_size=image_size,
        audio_seconds=audio_seconds,
    )
    return read_manifest(root / "manifest.csv")


def model_config_a(manifest, quick: bool) -> ModelConfig:
    """A small image+audio+text model that trains end to end (every encoder fine-tuned)."""
    width, size = (8, 32) if quick else (32, 64)
    inputs = {
        "image": InputConfig("image", "image", "cnn", {"width": width, "image_size": size}),
        "audio": InputConfig(
            "audio", "audio", "mel-cnn", {"width": width, "duration": 0.5, "n_mels": 64}
        ),
        "text": InputConfig("text", "text", "embedding-bag", {"dim": 128, "vocab_size": 2**14}),
    }
    heads = [HeadConfig("label", manifest.classes["label"])]
    return ModelConfig(inputs=inputs, heads=heads, fusion=FusionConfig("attention", 256))


def model_config_b(manifest, quick: bool) -> tuple[ModelConfig, str]:
    """Frozen image and text encoders; only the fusion and the head train."""
    if quick:
        image = InputConfig("image", "image", "cnn", {"width": 16, "image_size": 64}, "freeze")
    else:
        image = InputConfig("image", "image", "resnet18", {"image_size": 112}, mode="freeze")
    text, text_name = None, "embedding-bag"
    if not quick:
        try:
            from mmfuse.encoders.hf import default_text_model_path

            default_text_model_path()
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no "Loading weights" bar per model built
            text, text_name = InputConfig("text", "text", "hf", {}, mode="freeze"), "MiniLM"
        except Exception:  # transformers or the MiniLM package missing: stay offline
            pass
    if text is None:
        text = InputConfig("text", "text", "embedding-bag", {"dim": 128}, mode="freeze")
    heads = [HeadConfig("label", manifest.classes["label"])]
    config = ModelConfig(
        inputs={"image": image, "text": text}, heads=heads, fusion=FusionConfig("attention", 256)
    )
    return config, f"{image.encoder}@{image.options['image_size']}px + {text_name}, frozen"


def build(config: ModelConfig, manifest, seed: int = 0):
    """A fresh model (same weights for the same seed) and a fresh training dataset."""
    torch.manual_seed(seed)
    model = MultimodalModel.from_config(config)
    specs = {n: model.encoders[n].input_spec for n in model.names}
    dataset = MultimodalDataset(manifest, config.inputs, specs, manifest.classes, train=True)
    return model, dataset


def train_config(**overrides) -> TrainConfig:
    """The Trainer with its extras off, as close to the textbook loop as it gets."""
    options = dict(
        lr=LR,
        device="cpu",
        progress=False,
        tensorboard=False,
        grad_clip=None,
        schedule="constant",
        checkpoint_every=None,
        cache_features=False,
    )
    options.update(overrides)
    return TrainConfig(**options)


# ---------------------------------------------------------------------------------- runs
def run_trainer(model, dataset, config: ModelConfig, tc: TrainConfig, run_dir: Path) -> dict:
    """Fit; per-epoch train_time and samples/s from the history, wall times from the log."""
    ends: list[float] = []

    def log(line: str) -> None:
        if line.startswith("epoch "):
            ends.append(time.perf_counter())

    start = time.perf_counter()
    result = Trainer(model, tc, run_dir, model_config=config, log=log).fit(dataset)
    end = time.perf_counter()
    return {
        "rates": [h["samples_per_s"] for h in result.history],
        "times": [h["train_time"] for h in result.history],
        "first_epoch_wall": ends[0] - start,
        "last_checkpoint": end - ends[-1],  # the epoch-end save after the last epoch's log line
        "wall": end - start,
        "samples": sum(h["samples_per_s"] * h["train_time"] for h in result.history),
    }


def run_plain(model, dataset, epochs: int, batch_size: int, workers: int) -> dict:
    """The textbook loop: DataLoader → forward → cross-entropy → backward → AdamW step."""
    start_all = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    model.train()
    rates, times, total = [], [], 0
    for _ in range(epochs):
        seen = 0
        start = time.perf_counter()
        for batch in loader:
            inputs = {
                # Text arrives as strings; the encoder's tokenizer turns them into ids.
                n: model.encoders[n].tokenize(x) if isinstance(x, list) else x
                for n, x in batch["inputs"].items()
            }
            logits = model(inputs, batch["mask"])
            loss = sum(F.cross_entropy(logits[t], y) for t, y in batch["labels"].items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(batch["rows"])
        took = time.perf_counter() - start
        rates.append(seen / took)
        times.append(took)
        total += seen
    return {
        "rates": rates,
        "times": times,
        "wall": time.perf_counter() - start_all,
        "samples": total,
    }


# ---------------------------------------------------------------------------------- (A)
def bench_loops(manifest, config, args, tmp: Path) -> list[tuple]:
    """Per workers setting: median epoch samples/s, median paired ratio, whole-fit samples/s."""
    rows = []
    for workers in (0, 2):
        tc = train_config(epochs=args.epochs, batch_size=args.batch_size, workers=workers)
        rates = {"trainer": [], "plain": []}  # every epoch of every repeat
        walls = {"trainer": [], "plain": []}  # whole-run samples/s, one per repeat
        ratios = []  # trainer / plain of the two runs of one repeat, side by side in time
        saves = []  # seconds of the Trainer's last epoch-end checkpoint
        for r in range(args.repeats):
            # Methods take turns, so a burst of load from elsewhere hits both alike.
            model, dataset = build(config, manifest)
            t = run_trainer(model, dataset, config, tc, tmp / f"a-w{workers}-{r}")
            model, dataset = build(config, manifest)
            p = run_plain(model, dataset, args.epochs, args.batch_size, workers)
            for name, out in (("trainer", t), ("plain", p)):
                rates[name] += out["rates"]
                walls[name].append(out["samples"] / out["wall"])
            ratios.append(sum(p["times"]) / sum(t["times"]))  # same samples: rate ratio
            saves.append(t["last_checkpoint"])
        med = {k: statistics.median(v) for k, v in rates.items()}
        wall = {k: statistics.median(v) for k, v in walls.items()}
        rows.append((workers, med, statistics.median(ratios), wall, statistics.median(saves)))
    return rows


def warm_up(manifest, config, args, tmp: Path) -> None:
    """One untimed epoch of each, so first-call costs (allocators, lazy init) hit neither."""
    model, dataset = build(config, manifest)
    run_trainer(
        model, dataset, config, train_config(epochs=1, batch_size=args.batch_size), tmp / "warm-up"
    )
    model, dataset = build(config, manifest)
    run_plain(model, dataset, 1, args.batch_size, 0)


# ---------------------------------------------------------------------------------- (B)
def bench_cache(manifest, config, args, tmp: Path) -> dict:
    """Per cache setting: median epoch-1 wall time (cache fill included), median later epoch."""
    model, dataset = build(config, manifest)  # untimed: first calls of the frozen encoders
    tc = train_config(epochs=1, batch_size=args.batch_size)
    run_trainer(model, dataset, config, tc, tmp / "b-warm-up")
    out = {True: {"first": [], "later": []}, False: {"first": [], "later": []}}
    for r in range(args.cache_repeats):
        for cached in (True, False):
            tc = train_config(
                epochs=args.cache_epochs,
                batch_size=args.batch_size,
                cache_features=cached,
                cache_dir=str(tmp / f"cache-{r}"),  # empty: epoch 1 fills it
            )
            model, dataset = build(config, manifest)  # fresh: a cached fit sets its features
            res = run_trainer(model, dataset, config, tc, tmp / f"b-{cached}-{r}")
            out[cached]["first"].append(res["first_epoch_wall"])
            out[cached]["later"] += res["times"][1:]
    return {k: {s: statistics.median(v) for s, v in d.items()} for k, d in out.items()}


# ---------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256, help="generated samples (A and B)")
    parser.add_argument("--repeats", type=int, default=5, help="(A) runs per method and row")
    parser.add_argument("--epochs", type=int, default=2, help="(A) epochs per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache-epochs", type=int, default=4, help="(B) epochs per run, >= 2")
    parser.add_argument("--cache-repeats", type=int, default=3, help="(B) runs per method")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="tiny models and data (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.repeats, args.epochs = 48, 1, 1
        args.batch_size, args.cache_epochs, args.cache_repeats = 16, 2, 1
    if args.cache_epochs < 2:
        parser.error(
            f"--cache-epochs must be >= 2 (epoch 1 fills the cache), got {args.cache_epochs}"
        )
    torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{args.samples} samples, batch {args.batch_size}"
        + (", --quick" if args.quick else "")
        + f"; load average before: {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = make_data(tmp / "data", args.samples, 64, 0.5)
        config_a = model_config_a(manifest, args.quick)
        warm_up(manifest, config_a, args, tmp)
        rows = bench_loops(manifest, config_a, args, tmp)
        config_b, label_b = model_config_b(manifest, args.quick)
        cache = bench_cache(manifest, config_b, args, tmp)

    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min, this run's own load included)")
    params = sum(p.numel() for p in build(config_a, manifest)[0].parameters())
    image = config_a.inputs["image"].options
    print(
        f"\n(A) Trainer vs plain loop: cnn width {image['width']} @ {image['image_size']} px + "
        f"mel-cnn + embedding-bag, attention fusion, {params:,} parameters, "
        f"{args.epochs} epoch(s) x {args.repeats} repeat(s)\n"
    )
    print(
        "| workers | trainer samples/s | plain samples/s | trainer / plain | "
        "whole fit: trainer | whole fit: plain | whole fit: trainer / plain | checkpoint s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workers, med, ratio, wall, save in rows:
        print(
            f"| {workers} | {med['trainer']:.1f} | {med['plain']:.1f} | {ratio:.3f} | "
            f"{wall['trainer']:.1f} | {wall['plain']:.1f} | "
            f"{wall['trainer'] / wall['plain']:.3f} | {save:.3f} |"
        )
    print(
        "(samples/s: median over every training epoch, checkpoint excluded; trainer / plain: "
        "median over repeats of the ratio of the two runs taken side by side; 'whole fit': "
        "median samples/s over the whole run, set-up and the Trainer's per-epoch checkpoint "
        "included; checkpoint s: the Trainer's epoch-end save, median; target: trainer / plain "
        ">= 0.95)"
    )

    print(
        f"\n(B) Fusion-head training on frozen encoders ({label_b}), "
        f"{args.cache_epochs} epochs x {args.cache_repeats} repeat(s)\n"
    )
    print("| feature cache | epoch 1 s (incl. cache fill) | later epochs s (median) |")
    print("|---|---:|---:|")
    for cached in (True, False):
        c = cache[cached]
        print(f"| {'on' if cached else 'off'} | {c['first']:.3f} | {c['later']:.4f} |")
    first = cache[False]["first"] / cache[True]["first"]
    later = cache[False]["later"] / cache[True]["later"]
    print(
        f"\nspeed-up with the cache: epoch 1 {first:.2f}x, later epochs {later:.1f}x "
        "(target for later epochs: >= 20x)"
    )


if __name__ == "__main__":
    main()
