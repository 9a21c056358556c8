"""`mmfuse embed`: the learned vectors of every row of a manifest, streamed to a file."""

from __future__ import annotations

import argparse
import sys

from mmfuse.cli.common import (
    EXIT_OK,
    UsageError,
    add_device_flag,
    add_model_dir,
    check_some_rows,
    load_predictor,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_dir(p)
    p.add_argument("manifest", help="manifest with the model's input columns")
    p.add_argument(
        "--out", required=True, metavar="FILE", help="the .parquet or .csv file to write"
    )
    p.add_argument(
        "--level",
        choices=("fused", "inputs"),
        default="fused",
        help="fused: the vector the model's heads take (default); inputs: each input's vector",
    )
    p.add_argument("--shard", metavar="I/N", help="embed only slice I of N (0-based), e.g. 0/4")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its parts")
    p.add_argument(
        "--chunk-rows", type=int, default=4096, metavar="N", help="rows per part file (4096)"
    )
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    add_device_flag(p, "cpu")


def run(args: argparse.Namespace) -> int:
    """Write the embeddings a saved model computes for every row of a manifest.

    --level fused (default): per row the fused vector the classification heads take, in
    columns fused_0..fused_{F-1}; applying the heads to it gives the row's prediction. --level
    inputs: each input's encoder vector, <input>_0.. (zeros where the input is absent, as the
    fusion sees it) and <input>_present. Every row also has `row` (its manifest row) and `error`
    (why it has no embedding: its files could not be read). Rows are streamed in chunks as by
    `mmfuse predict --out`: bounded memory, --shard I/N, --resume after a kill.

    examples:
      mmfuse embed runs/train data/test.csv --out emb.parquet
      mmfuse embed runs/train corpus.parquet --out emb.parquet --level inputs --workers 4
    """
    from mmfuse.infer.embed import embed_manifest
    from mmfuse.infer.streamed import parse_shard

    if args.chunk_rows < 1:
        raise UsageError(f"--chunk-rows {args.chunk_rows}: give at least 1 row per part")
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    predictor = load_predictor(args.model_dir, args.device)
    result = embed_manifest(
        predictor,
        args.manifest,
        args.out,
        level=args.level,
        shard=shard,
        resume=args.resume,
        batch_size=args.batch_size,
        chunk_rows=args.chunk_rows,
        workers=args.workers,
        log=lambda message: print(message, file=sys.stderr),
    )
    check_some_rows(result, args.out, "an embedding")
    return EXIT_OK
