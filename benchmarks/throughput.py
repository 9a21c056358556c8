"""Does the data path keep the model busy? Pipeline vs compute ceiling per input, before and after.

    .venv/bin/python benchmarks/throughput.py                 # 280 avdigits rows, 6 epochs
    .venv/bin/python benchmarks/throughput.py --quick         # smoke test, a few minutes

For each input of avdigits alone (image, audio, video, with the encoder `mmfuse train` gives it
under the `fast` preset) and for all four together, and for each setting:

- pipeline: samples/s of `Trainer.fit` from epoch 2 on (the median of epochs 2+), the whole
  data path included: reading, decoding, preprocessing, collating, the step;
- ceiling: samples/s of the same model's training step (`train.step.train_step`: forward,
  loss, backward, clipping, AdamW) repeated on one real batch already in memory;
- share: pipeline / ceiling, the share of its compute speed the data path lets the model reach
  (target: >= 90% from epoch 2 on);
- model busy (with `--profile`): the fit's own `--profile` share, forward + backward +
  optimiser over the epoch's wall time (median of epochs 2+). Measured inside the same epochs
  as the pipeline, it does not move with the machine's speed between the fit and the ceiling's
  rounds, which on a shared VM moves the share by several points from run to run.

Each input and setting is measured in a process of its own (a fresh allocator, see
after-plain-malloc), taking turns per input; `--rounds R` measures everything R times, the
settings' order reversed every other round, and prints medians and, per input, the paired ratios
of the last setting to the first (the VM's speed drifts by 20-30% from minute to minute here;
pairs taken a minute apart see the same drift). Settings:

- before: workers=0, no decoded-sample cache, fp32, the old video encoder (8 frames of 64 px);
- after: today's defaults (workers="auto", the decoded-sample cache, today's precision and
  video encoder);
- after-bf16 (with `--settings before,after,after-bf16`): today's defaults with bf16 autocast
  and channels-last, the ceiling where the hardware has bf16 units;
- after-cl: today's defaults with channels-last alone (fp32);
- after-fp32: today's defaults in fp32 (what "after" is where the device has no bf16 units);
- after-plain-malloc: today's defaults with `keep_freed_memory=False` (glibc's own thresholds:
  freed memory handed back to the system at once, `train.allocator`).

`--width 16` (or 8) gives the image, audio and video encoders narrower convolutions, whose cost
falls about with the square of the width: on a slow CPU, the model a fast one (or bf16 units)
would train, against this CPU's data path (docs/throughput.md, "How fast a model does the data
path keep busy?").

Each fit starts from an empty cache folder. Printed with the load average before and after:
figures taken on a busy machine say little.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from mmfuse.data.avdigits import ensure_avdigits
from mmfuse.data.manifest import read_manifest
from mmfuse.infer.batch import row_loader
from mmfuse.train.allocator import keep_freed_memory
from mmfuse.train.config import TrainConfig
from mmfuse.train.optim import optimizer_for, scheduler_for
from mmfuse.train.presets import FAST_ENCODERS
from mmfuse.train.run import build_model, dataset_for, model_config_for
from mmfuse.train.step import StepContext, train_step
from mmfuse.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from default_run import OLD_VIDEO

CASES = {"image": ["image"], "audio": ["audio"], "video": ["video"]}
CASES["all four"] = ["image", "audio", "video", "text"]
SETTINGS = {
    "before": {
        "workers": 0,
        "decoded_cache": False,
        "precision": "fp32",
        "channels_last": False,
        "keep_freed_memory": False,
    },
    "after": {},
    "after-plain-malloc": {"keep_freed_memory": False},
    "after-bf16": {"precision": "bf16", "channels_last": True},
    "after-cl": {"precision": "fp32", "channels_last": True},
    "after-fp32": {"precision": "fp32", "channels_last": False},
}


def case_manifest(columns: list[str], splits: dict, rows: int, tmp: Path):
    """The first `rows` training rows with `columns` and the label, paths made absolute."""
    source = Path(splits["train"])
    frame = pd.read_csv(source).iloc[:rows]
    for column in columns:
        if column != "text":
            frame[column] = [str(source.parent / p) for p in frame[column]]
    path = tmp / f"{'-'.join(columns)}.csv"
    frame[[*columns, "label"]].to_csv(path, index=False)
    return read_manifest(path)


def model_config(manifest, setting: str, width: int | None = None):
    """The `fast` preset's encoders (`width`: their convolutions' base width instead of 32)."""
    chosen = {m: FAST_ENCODERS[m] for m in ("image", "audio", "video")} if width else {}
    if setting == "before" and "video" in manifest.inputs:
        chosen["video"] = ("frames", OLD_VIDEO)
    encoders = {}
    for modality, (name, options) in chosen.items():
        options = copy.deepcopy(options)
        if width:
            (options["image_options"] if modality == "video" else options)["width"] = width
        encoders[modality] = {"encoder": name, "options": options}
    return model_config_for(manifest, encoders=encoders)


def train_config(setting: str, args, cache_dir: Path) -> TrainConfig:
    options = {"workers": args.workers} if setting != "before" and args.workers else {}
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        progress=False,
        tensorboard=False,
        cache_dir=str(cache_dir),
        **{**SETTINGS[setting], **options},
    )


def pipeline(manifest, setting: str, args, tmp: Path) -> tuple[float, float | None]:
    """Median samples/s of epochs 2+ of a fit, and (`--profile`) the median share of those
    epochs' wall time the model was busy."""
    config = model_config(manifest, setting, args.width)
    cfg = train_config(setting, args, tmp / f"cache-{time.monotonic_ns()}")
    cfg = dataclasses.replace(cfg, profile=args.profile)
    model = build_model(config, 0)
    dataset = dataset_for(manifest, model, config, cfg, train=True)
    run_dir = tmp / f"run-{time.monotonic_ns()}"
    result = Trainer(model, cfg, run_dir, model_config=config, log=lambda line: None).fit(dataset)
    rate = statistics.median(h["samples_per_s"] for h in result.history[1:])
    busy = statistics.median(h["model_busy"] for h in result.history[1:]) if args.profile else None
    return rate, busy


def ceiling(manifest, setting: str, args, tmp: Path) -> float:
    """Samples/s of the training step on one batch held in memory."""
    ctx, optimizer, scheduler, batch = step_setup(manifest, setting, args, tmp)
    steps = (timed_steps(ctx, batch, optimizer, scheduler, args.steps) for _ in range(args.repeats))
    return statistics.median(steps)


def step_setup(manifest, setting: str, args, tmp: Path) -> tuple:
    """(step context, optimizer, scheduler, batch) of a new model of `setting` (the same
    weights and batch every call), warmed up: what `ceiling` times."""
    config = model_config(manifest, setting, args.width)
    device = torch.device(args.device)
    # As the trainer does: "auto" precision settled for the device (bf16 + channels-last).
    cfg = train_config(setting, args, tmp / "unused").for_device(device)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    model = build_model(config, 0)
    dataset = dataset_for(manifest, model, config, cfg, train=True)
    batch = next(iter(row_loader(dataset, [[(1, r) for r in range(args.batch_size)]])))
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = optimizer_for(model, config, cfg)
    scheduler = scheduler_for(optimizer, cfg, args.steps * 10)
    ctx = StepContext.for_fit(model, config, cfg, dataset, device, torch.Generator())
    model.train()
    for _ in range(2):  # warm-up: allocator, oneDNN kernel choice
        train_step(ctx, batch, optimizer, scheduler)
    return ctx, optimizer, scheduler, batch


def timed_steps(ctx: StepContext, batch: dict, optimizer, scheduler, steps: int) -> float:
    """Samples/s of `steps` training steps on `batch`."""
    _sync(ctx.device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(ctx, batch, optimizer, scheduler)
    _sync(ctx.device)
    return steps * len(batch["rows"]) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1500, help="avdigits size (all splits)")
    parser.add_argument("--rows", type=int, default=280, help="training rows per fit")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per fit (>= 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="ceiling: steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="ceiling: timed rounds (median)")
    parser.add_argument("--workers", type=int, default=None, help="after: instead of auto")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--settings", default="before,after", help="of " + ",".join(SETTINGS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="64 rows, 2 epochs, 1 worker")
    parser.add_argument("--profile", action="store_true", help="also the fit's model-busy share")
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        help="the encoders' base width instead of 32: a cheaper model, as a faster CPU or bf16 "
        "units would make it, to see how fast a model the data path keeps busy",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every input and setting this many times, the settings' order reversed "
        "every other round; medians, and the paired ratios of the last setting to the first",
    )
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.epochs, args.steps, args.repeats = 64, 2, 2, 1
        args.batch_size, args.workers = 16, args.workers or 1
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the pipeline is measured from epoch 2 on")
    cases, settings = args.cases.split(","), args.settings.split(",")
    if not set(settings) <= set(SETTINGS) or not set(cases) <= set(CASES):
        parser.error(f"--settings are among {list(SETTINGS)}, --cases among {list(CASES)}")
    splits = ensure_avdigits(args.samples, progress=False)
    if args.child:
        print("RESULT " + json.dumps(measure(*args.child, splits, args)))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"device {args.device}; {args.rows} avdigits rows, batch {args.batch_size}, "
        f"{args.epochs} epochs, encoder width {args.width or 32}; load average before: {_load()}"
    )
    runs = {}
    for r in range(args.rounds):
        for case in cases:
            for setting in settings if r % 2 == 0 else settings[::-1]:
                rate, top, busy = run_child(case, setting)
                runs.setdefault((case, setting), []).append((rate, top, busy))
                shown = "" if busy is None else f", model busy {busy:.0%}"
                print(f"  {case}, {setting}: pipeline {rate:.1f}, ceiling {top:.1f}{shown}")
    print(f"load average after: {_load()}\n")
    out = {k: tuple(_median(v[i] for v in runs[k]) for i in range(3)) for k in runs}
    print_table(out, cases, settings)
    if args.rounds > 1 and len(settings) > 1:
        print_paired(runs, cases, settings)


def measure(case: str, setting: str, splits: dict, args) -> tuple:
    """(pipeline, ceiling, model busy) of one input and setting, in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = case_manifest(CASES[case], splits, args.rows, tmp)
        rate, busy = pipeline(manifest, setting, args, tmp)
        return rate, ceiling(manifest, setting, args, tmp), busy


def run_child(case: str, setting: str) -> tuple:
    """`measure` in a process of its own: `keep_freed_memory` changes the allocator for the
    rest of a process, so one setting's measurement must not inherit another's."""
    # The child reads the same options (it measures before `--rounds` would matter).
    command = [sys.executable, __file__, *sys.argv[1:], "--child", case, setting]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{case}, {setting} failed:\n{done.stderr[-3000:]}")
    return tuple(json.loads(lines[-1][len("RESULT ") :]))


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def print_paired(runs: dict, cases: list[str], settings: list[str]) -> None:
    """Per input, the median over rounds of (last setting / first setting) for the pipeline and
    the ceiling: measured minutes apart, so the machine's drift cancels as far as it can."""
    first, last = settings[0], settings[-1]
    print(f"\nPaired ratios, {last} / {first}, median over rounds (each round's ratios):")
    for case in cases:
        pairs = list(zip(runs[case, first], runs[case, last]))
        for i, what in ((0, "pipeline"), (1, "ceiling")):
            ratios = [b[i] / a[i] for a, b in pairs]
            each = ", ".join(f"{x:.2f}" for x in ratios)
            print(f"  {case}, {what}: {statistics.median(ratios):.2f}x ({each})")


def print_table(out: dict, cases: list[str], settings: list[str]) -> None:
    """Pipeline / ceiling and share per setting; with two settings or more, the last setting's
    pipeline over the first's."""
    profiled = any(v[2] is not None for v in out.values())
    extra = " | model busy" if profiled else ""
    head = " | ".join(f"{s}: pipeline / ceiling | share{extra}" for s in settings)
    ratio = len(settings) > 1
    tail = f" pipeline {settings[-1]} / {settings[0]} |" if ratio else ""
    print(f"| input | {head} |{tail}")
    cells_per_setting = "---:|---:|---:|" if profiled else "---:|---:|"
    print("|---|" + cells_per_setting * len(settings) + ("---:|" if ratio else ""))
    for case in cases:
        cells = []
        for setting in settings:
            rate, top, busy = out[case, setting]
            cells += [f"{rate:.0f} / {top:.0f}", f"{rate / top:.0%}"]
            cells += [f"{busy:.0%}"] if profiled else []
        if ratio:
            cells.append(f"{out[case, settings[-1]][0] / out[case, settings[0]][0]:.2f}x")
        print(f"| {case} | {' | '.join(cells)} |")
    print("(samples/s; share target: >= 90% from epoch 2 on with workers='auto')")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
