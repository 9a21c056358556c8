"""The training step with the fused optimiser against torch's per-tensor loop, per input.

    .venv/bin/python benchmarks/optimiser.py            # AdamW, the `fast` preset's models
    .venv/bin/python benchmarks/optimiser.py --rounds 3 --steps 2 --cases image   # smoke test

For each input of avdigits alone (image, audio, video) and all four together, the step of
`benchmarks/throughput.py`'s ceiling (`train.step.train_step` on one batch held in memory:
forward, loss, backward, clipping, the optimiser, the schedule) on two copies of the same
model: one built by `optimizer_for` (fused where `train.optim.fusable` says so), one with its
groups set back to the loop. The two take turns, round after round in one process, so a VM's
drifting speed falls on both; the table prints the median samples/s of each and the median of
the per-round ratios, with the load average before and after.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmfuse.data.avdigits import ensure_avdigits
from mmfuse.infer.batch import row_loader
from mmfuse.train.optim import optimizer_for, scheduler_for
from mmfuse.train.run import build_model, dataset_for
from mmfuse.train.step import StepContext, train_step

sys.path.insert(0, str(Path(__file__).parent))
from throughput import CASES, case_manifest, model_config, train_config


def contexts(manifest, args, tmp: Path) -> dict:
    """name → (context, optimizer, scheduler, batch) for "loop" and "fused", same weights."""
    config = model_config(manifest, "after")
    device = torch.device(args.device)
    cfg = train_config("after", args, tmp / "unused").for_device(device)
    base = build_model(config, 0)
    dataset = dataset_for(manifest, base, config, cfg, train=True)
    batch = next(iter(row_loader(dataset, [[(1, r) for r in range(args.batch_size)]])))
    out = {}
    for name in ("loop", "fused"):
        model = copy.deepcopy(base).to(device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = optimizer_for(model, config, cfg)
        if name == "loop":
            for group in optimizer.param_groups:
                group["fused"] = False
        scheduler = scheduler_for(optimizer, cfg, 10 * args.steps * args.rounds)
        ctx = StepContext.for_fit(model, config, cfg, dataset, device, torch.Generator())
        model.train()
        for _ in range(2):  # warm-up: allocator, oneDNN kernel choice
            train_step(ctx, batch, optimizer, scheduler)
        out[name] = (ctx, optimizer, scheduler, batch)
    return out


def paired_rates(runs: dict, args) -> dict[str, list[float]]:
    rates = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (ctx, optimizer, scheduler, batch) in runs.items():
            _sync(ctx.device)
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(ctx, batch, optimizer, scheduler)
            _sync(ctx.device)
            rates[name].append(args.steps * len(batch["rows"]) / (time.perf_counter() - start))
    return rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1500, help="avdigits size (all splits)")
    parser.add_argument("--rows", type=int, default=280, help="training rows the batch is from")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds of each")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    args.epochs, args.workers = 2, None  # what throughput's train_config reads
    cases = args.cases.split(",")
    if not set(cases) <= set(CASES):
        parser.error(f"--cases are among {list(CASES)}")
    splits = ensure_avdigits(args.samples, progress=False)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
        f"batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps; "
        f"load average before: {_load()}"
    )
    print("| input | loop: samples/s | fused: samples/s | paired ratio |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            manifest = case_manifest(CASES[case], splits, args.rows, Path(tmp))
            rates = paired_rates(contexts(manifest, args, Path(tmp)), args)
            loop, fused = rates["loop"], rates["fused"]
            ratio = statistics.median(f / s for f, s in zip(fused, loop))
            print(
                f"| {case} | {statistics.median(loop):.0f} | {statistics.median(fused):.0f} "
                f"| {ratio:.2f}x |",
                flush=True,
            )
    print(f"load average after: {_load()}")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
