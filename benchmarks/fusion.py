"""Measure every fusion method: parameters, matmul FLOPs and forward time; print a markdown table.

    .venv/bin/python benchmarks/fusion.py                 # D=256, M=3, batch 64 (docs/fusion.md)
    .venv/bin/python benchmarks/fusion.py --dim 512 --modalities 4 --batch 128

Each method is built with its default options; times are the median over `--repeats` timed
forward passes (eval mode, no grad) after `--warmup` untimed ones, and the median of forward +
backward in train mode. Methods are timed round-robin rather than one after the other, so that
load from other processes on a shared machine spreads over all of them. FLOPs come from torch's FlopCounterMode, which counts matmuls,
convolutions and attention but not element-wise work (e.g. tensor fusion's outer product).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmfuse import fusion

MODALITY_NAMES = ["audio", "image", "text", "video", "depth", "imu"]


class Case:
    """One method on fixed inputs, with its forward and forward+backward steps ready to time."""

    def __init__(self, name, dims, output_dim, batch, tokens=None, label=None):
        torch.manual_seed(0)
        self.label = label or name
        self.module = fusion.build(name, dims, output_dim)
        self.x = {m: torch.randn(batch, d) for m, d in dims.items()}
        self.mask = torch.ones(batch, len(dims), dtype=torch.bool)
        self.kwargs = {"tokens": tokens} if tokens else {}
        self.times = {"forward": [], "train": []}

    def forward(self):
        self.module.eval()
        with torch.no_grad():
            self.module(self.x, self.mask, **self.kwargs)

    def train_step(self):
        self.module.train()
        self.module.zero_grad(set_to_none=True)
        self.module(self.x, self.mask, **self.kwargs).sum().backward()

    def mflops(self) -> float:
        self.module.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.module(self.x, self.mask, **self.kwargs)
        return counter.get_total_flops() / 1e6


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def run(cases: list[Case], warmup: int, repeats: int) -> None:
    """Time the cases round-robin, so a burst of load from elsewhere hits all methods alike."""
    for _ in range(warmup):
        for case in cases:
            case.forward()
            case.train_step()
    for _ in range(repeats):
        for case in cases:
            case.times["forward"].append(timed(case.forward))
            case.times["train"].append(timed(case.train_step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256, help="every modality's feature dim D_m")
    parser.add_argument("--modalities", type=int, default=3, help="number of modalities M")
    parser.add_argument("--output-dim", type=int, default=256, help="fused dim D (late: classes)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per modality, extra row")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    if not 1 <= args.modalities <= len(MODALITY_NAMES):
        parser.error(f"--modalities must be in 1..{len(MODALITY_NAMES)}, got {args.modalities}")
    torch.set_num_threads(args.threads)

    dims = {m: args.dim for m in MODALITY_NAMES[: args.modalities]}
    cases = [Case(n, dims, args.output_dim, args.batch) for n in fusion.available()]
    if args.tokens:
        tokens = {m: torch.randn(args.batch, args.tokens, d) for m, d in dims.items()}
        label = f"transformer ({args.tokens} tokens/modality)"
        cases.append(Case("transformer", dims, args.output_dim, args.batch, tokens, label))
    run(cases, args.warmup, args.repeats)

    print(
        f"D_m={args.dim}, M={args.modalities}, D={args.output_dim}, batch={args.batch}, "
        f"torch {torch.__version__}, {args.threads} threads, default options, all present\n"
    )
    print("| method | params | MFLOPs / forward | forward ms | forward+backward ms |")
    print("|---|---:|---:|---:|---:|")
    for case in cases:
        params = sum(p.numel() for p in case.module.parameters())
        forward = statistics.median(case.times["forward"])
        train = statistics.median(case.times["train"])
        print(f"| {case.label} | {params:,} | {case.mflops():.1f} | {forward:.2f} | {train:.2f} |")


if __name__ == "__main__":
    main()
