"""`mmfuse demo`: the whole pipeline on generated data, over mmfuse.demo.run_demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmfuse.cli.common import EXIT_OK


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", help="folder for the data, run and report")
    p.add_argument(
        "--samples", type=int, metavar="N", help="dataset size (default: the demo's own)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the whole pipeline on generated data: make a dataset, train, evaluate, predict.

    A few minutes on a laptop CPU; prints each step and where its files went.

    examples:
      mmfuse demo
      mmfuse demo --out demo-run --samples 300
    """
    from mmfuse.demo import run_demo

    run_demo(out_dir=Path(args.out) if args.out else None, samples=args.samples)
    return EXIT_OK
