"""`mmfuse datasets make surveillance DIR`: generated scenes, over mmfuse.data.surveillance."""

from __future__ import annotations

import argparse

from mmfuse.cli.common import EXIT_OK


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="output folder")
    p.add_argument(
        "--samples", type=int, metavar="N", default=400, help="clips in all (default: 400)"
    )
    p.add_argument("--seed", type=int, metavar="N", default=0, help="generation seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    """Generate surveillance clips: normal scenes, and anomalies that are visual, acoustic or both.

    Writes DIR/train.csv and val.csv (normal clips only) and test.csv (half normal, half
    anomalies; columns video, label, kind) with 2 s MP4 clips (96×72, 10 fps, 16 kHz sound)
    under DIR/media; the same --samples and --seed give the same files.

    examples:
      mmfuse datasets make surveillance data/surv
      mmfuse anomaly fit data/surv/train.csv --val data/surv/val.csv --out runs/surv
      mmfuse anomaly evaluate runs/surv data/surv/test.csv
    """
    from mmfuse.data.surveillance import make_surveillance

    paths = make_surveillance(args.dir, samples=args.samples, seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"next: mmfuse anomaly fit {paths['train']} --val {paths['val']} --out DIR")
    return EXIT_OK
