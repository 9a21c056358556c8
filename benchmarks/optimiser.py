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
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from mmfuse.data.avdigits import ensure_avdigits

sys.path.insert(0, str(Path(__file__).parent))
from throughput import CASES, case_manifest, step_setup, timed_steps


def paired_rates(manifest, args, tmp: Path) -> dict[str, list[float]]:
    """Samples/s per round of the same model and batch, fused and looped, taking turns."""
    runs = {"loop": step_setup(manifest, "after", args, tmp)}
    runs["fused"] = step_setup(manifest, "after", args, tmp)
    for group in runs["loop"][1].param_groups:
        group["fused"] = False
    rates = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (ctx, optimizer, scheduler, batch) in runs.items():
            rates[name].append(timed_steps(ctx, batch, optimizer, scheduler, args.steps))
    return rates


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
    args.epochs, args.workers, args.width = 2, None, None  # what throughput's setup reads
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
            rates = paired_rates(manifest, args, Path(tmp))
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
