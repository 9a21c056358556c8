"""Training-step throughput of a CNN encoder under the trainer's speed options; print a table.

    .venv/bin/python benchmarks/precision.py                  # ResNet-18, 64 px, batch 64
    .venv/bin/python benchmarks/precision.py --size 112 --batch 32 --steps 10

Compares, in one run and taking turns, the three settings `TrainConfig` offers for CNNs:
fp32 (contiguous), `channels_last=True`, and `channels_last=True` with `precision="bf16"`
(autocast). A step is forward, cross-entropy, backward and an AdamW update, through the same
`MultimodalModel` + autocast code path the trainer uses. Figures are images/s, the median over
`--repeats` rounds of `--steps` steps after a warm-up, and their ratio to fp32. bf16 pays off
only where the CPU has native bf16 matrix units (AVX512-BF16 / AMX) or on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mmfuse.model import FusionConfig, HeadConfig, InputConfig, ModelConfig, MultimodalModel

SETTINGS = {
    "fp32": {"channels_last": False, "bf16": False},
    "channels-last": {"channels_last": True, "bf16": False},
    "channels-last + bf16": {"channels_last": True, "bf16": True},
}


class Case:
    def __init__(self, label: str, encoder: str, size: int, batch: int, device: torch.device):
        torch.manual_seed(0)
        options = SETTINGS[label]
        config = ModelConfig(
            inputs={"image": InputConfig("image", "image", encoder, {})},
            heads=[HeadConfig("label", [str(i) for i in range(10)])],
            fusion=FusionConfig("concat", 256),
        )
        self.model = MultimodalModel.from_config(config).to(device)
        self.x = torch.randn(batch, 3, size, size, device=device)
        self.y = torch.randint(0, 10, (batch,), device=device)
        self.mask = torch.ones(batch, 1, dtype=torch.bool, device=device)
        if options["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.bf16 = options["bf16"]
        self.device = device
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.rates: list[float] = []

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model({"image": self.x}, self.mask)["label"]
        loss = torch.nn.functional.cross_entropy(logits.float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def timed(self, steps: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.rates.append(steps * self.x.shape[0] / (time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per setting")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"device {device}; {args.encoder} at {args.size} px, batch {args.batch}"
    )
    cases = [Case(label, args.encoder, args.size, args.batch, device) for label in SETTINGS]
    for case in cases:  # warm-up: allocator, oneDNN kernel selection
        case.timed(2)
        case.rates.clear()
    for _ in range(args.repeats):  # take turns, so load from other processes spreads evenly
        for case in cases:
            case.timed(args.steps)
    base = statistics.median(cases[0].rates)
    print("\n| setting | images/s | vs fp32 |\n|---|---:|---:|")
    for case, label in zip(cases, SETTINGS):
        rate = statistics.median(case.rates)
        print(f"| {label} | {rate:.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
