"""`mmfuse datasets make avdigits DIR`: the example dataset, over mmfuse.data.avdigits."""

from __future__ import annotations

import argparse

from mmfuse.cli.common import EXIT_OK


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="output folder")
    p.add_argument(
        "--samples", type=int, metavar="N", default=2000, help="samples in all (default: 2000)"
    )
    p.add_argument("--seed", type=int, metavar="N", default=0, help="generation seed (default: 0)")
    p.add_argument("--workers", type=int, metavar="N", help="processes (default: one per core)")
    p.add_argument(
        "--tabular",
        action="store_true",
        help="also write <split>-tabular.csv with a numeric `weight` and a categorical `ink`",
    )


def run(args: argparse.Namespace) -> int:
    """Generate avdigits: ten digit classes, each sample an image, speech, a video and a caption.

    Writes DIR/train.csv, val.csv and test.csv with the media under DIR/media; the same
    --samples and --seed give the same files. Needs espeak-ng on PATH. With --tabular, also
    DIR/train-tabular.csv, ...: the same rows plus a noisy measurement (`weight`, numeric) and a
    category (`ink`), both weakly tied to the digit.

    examples:
      mmfuse datasets make avdigits data/avdigits
      mmfuse datasets make avdigits data/avdigits --samples 500 --seed 1
      mmfuse datasets make avdigits data/avdigits --tabular
      mmfuse train data/avdigits/train.csv --val data/avdigits/val.csv
    """
    from mmfuse.data.avdigits import make_avdigits

    paths = make_avdigits(
        args.dir, samples=args.samples, seed=args.seed, workers=args.workers, tabular=args.tabular
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    if "train" in paths and "val" in paths:
        print(f"next: mmfuse train {paths['train']} --val {paths['val']}")
    return EXIT_OK
