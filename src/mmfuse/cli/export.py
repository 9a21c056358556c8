"""`mmfuse export`: a model folder → ONNX (optionally int8), and a before/after table."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mmfuse.cli.common import EXIT_OK, add_model_dir, model_folder
from mmfuse.ship.quantize import QUANTIZE_MODES, quantize_onnx


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_dir(p)
    p.add_argument(
        "--format", choices=["onnx"], default="onnx", help="export format (default: onnx)"
    )
    p.add_argument(
        "--out", metavar="FILE", help="the .onnx file to write (default: MODEL_DIR/model.onnx)"
    )
    p.add_argument(
        "--quantize",
        choices=list(QUANTIZE_MODES),
        help="dynamic int8 quantisation of the Linear and embedding weights (convs stay fp32)",
    )
    p.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset (default: 17)")
    p.add_argument(
        "--manifest",
        metavar="MANIFEST",
        help="labelled manifest: print size, latency and accuracy before and after export",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=20,
        metavar="N",
        help="timed batch-1 runs per model in the table (default: 20)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="intra-op threads of torch and onnxruntime in the table (default: their own)",
    )


def run(args: argparse.Namespace) -> int:
    """Export a model folder to ONNX (probabilities out, dynamic batch) with a JSON sidecar.

    The graph takes preprocessed tensors, one per input (text as <name>.input_ids and
    <name>.attention_mask), and the presence mask `mask` (bool B×M, columns in sorted input
    order); it returns proba_<task>. The sidecar <out>.json lists the inputs, shapes, labels and
    preprocessing. --quantize int8 makes Linear and embedding weights int8 (onnxruntime dynamic
    quantisation). With --manifest, prints size, latency and accuracy of the torch model and the
    export(s) as a table.

    examples:
      mmfuse export runs/train --out model.onnx
      mmfuse export runs/train --out model.int8.onnx --quantize int8 --manifest data/val.csv
    """
    from mmfuse.ship.onnx import export_onnx

    folder = model_folder(args.model_dir)
    out = Path(args.out) if args.out else folder / "model.onnx"
    if args.quantize is None:
        summary = export_onnx(args.model_dir, out, opset=args.opset)
        print(_summary_line(summary))
        _print_table(args, [("onnx fp32", out)])
        return EXIT_OK
    # The fp32 file is kept until the table is printed: the table compares it too.
    with tempfile.TemporaryDirectory(prefix="mmfuse-export-") as tmp:
        fp32 = export_onnx(args.model_dir, Path(tmp) / "model.onnx", opset=args.opset)
        summary = quantize_onnx(fp32["path"], out, mode=args.quantize)
        print(_summary_line(summary))
        print(f"quantised: {summary['quantized_ops']}")
        _print_table(args, [("onnx fp32", fp32["path"]), (f"onnx {args.quantize}", out)])
    return EXIT_OK


def _print_table(args: argparse.Namespace, pairs: list[tuple[str, str | Path]]) -> None:
    if args.manifest:
        from mmfuse.ship.measure import export_report, format_report

        rows = export_report(
            args.model_dir, pairs, args.manifest, repeats=args.repeats, threads=args.threads
        )
        print(format_report(rows, f"on {args.manifest}:"))


def _summary_line(summary: dict) -> str:
    return (
        f"wrote {summary['path']} ({summary['size'] / 1e6:.3f} MB) and {summary['sidecar']}\n"
        f"inputs: {', '.join(summary['inputs'])}\noutputs: {', '.join(summary['outputs'])}"
    )
