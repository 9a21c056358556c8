"""Dynamic int8 quantisation of an exported .onnx file (onnxruntime's `quantize_dynamic`).

Weights become int8 and activations are quantised at run time (uint8). `quantize_dynamic`'s op
list has MatMul but not Gemm, and the exporter writes every 2-D `nn.Linear` as Gemm, so Gemms are
first rewritten as MatMul + Add; then the weights of every Linear (MatMulInteger) and embedding
table (Gather, stored 8-bit) are quantised. Convolutions stay fp32 by default: ORT's dynamic
ConvInteger has no fast kernel and runs several times slower than the fp32 Conv on CPU, for a
model that is smaller still (`quantize_onnx(..., conv=True)` if size is all that counts; fast
int8 convs need static, calibrated QDQ quantisation). The sidecar lists what was quantised.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mmfuse.ship.sidecar import ExportError, read_sidecar, write_sidecar

QUANTIZE_MODES = ("int8",)
# Ops `quantize_dynamic` turns to integer ops; Conv only on request (see the module docstring).
DYNAMIC_OPS = ("MatMul", "Gather")


def check_mode(mode: str | None) -> None:
    """An ExportError naming the flag unless `mode` is None (fp32) or a supported mode."""
    if mode is not None and mode not in QUANTIZE_MODES:
        raise ExportError(
            f"quantize={mode!r} is not supported; use one of {list(QUANTIZE_MODES)} "
            "(--quantize int8) or leave it out for fp32"
        )


def quantize_onnx(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    mode: str = "int8",
    conv: bool = False,
) -> dict:
    """Dynamic int8 quantisation of an exported model: MatMul/Gemm and Gather weights, and the
    Conv weights too with `conv=True` (smaller, but slower on CPU)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if mode not in QUANTIZE_MODES:
        raise ExportError(f"quantize mode {mode!r} is not supported; use one of {QUANTIZE_MODES}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    sidecar = read_sidecar(onnx_path)
    graph = onnx.load(str(onnx_path))
    before = _op_counts(graph)
    gemm_to_matmul(graph)
    with tempfile.TemporaryDirectory(prefix="mmfuse-quant-") as tmp:
        staged = Path(tmp) / "matmul.onnx"
        onnx.save(graph, str(staged))
        with _quiet_logging():
            quantize_dynamic(
                str(staged),
                str(out_path),
                op_types_to_quantize=[*DYNAMIC_OPS, *(["Conv"] if conv else [])],
                weight_type=QuantType.QInt8,
                extra_options={"MatMulConstBOnly": True},  # weights only, never activation pairs
            )
    after = _op_counts(onnx.load(str(out_path)))
    sidecar.update(
        quantize=mode,
        quantized_ops={
            "MatMul (Linear layers, incl. the Gemms rewritten)": after.get("MatMulInteger", 0),
            "Gather (embedding tables)": _count_quantized_gathers(out_path),
            "Conv (ConvInteger)": after.get("ConvInteger", 0),
            "Conv (left fp32)": after.get("Conv", 0),
        },
        ops_before=before,
    )
    return write_sidecar(out_path, sidecar)


def gemm_to_matmul(graph) -> int:
    """Rewrite each Gemm with a constant weight as MatMul (+ Add): dynamic quantisation's op list
    has MatMul but not Gemm. Returns how many were rewritten; the graph is changed in place."""
    weights = {t.name: t for t in graph.graph.initializer}
    made: set[str] = set()  # transposed weights already added (a Linear called twice)
    nodes, changed = [], 0
    for node in graph.graph.node:
        if not _plain_gemm(node, weights):
            nodes.append(node)
            continue
        nodes += _as_matmul(graph, node, weights, made)
        changed += 1
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    # Drop the transposed-away originals that nothing reads any more.
    used = {i for n in graph.graph.node for i in n.input}
    keep = [t for t in graph.graph.initializer if t.name in used]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(keep)
    return changed


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _plain_gemm(node, weights) -> bool:
    """A Gemm that is `x @ W(.T) + b`: constant weight, unit scales, `x` not transposed."""
    if node.op_type != "Gemm" or node.input[1] not in weights:
        return False
    attrs = _attributes(node)
    return (
        attrs.get("alpha", 1.0) == 1.0
        and attrs.get("beta", 1.0) == 1.0
        and not attrs.get("transA", 0)
    )


def _as_matmul(graph, node, weights, made: set[str]) -> list:
    """The MatMul (and bias Add) nodes that replace the Gemm `node`, adding a K×N weight copy
    when the Gemm reads its weight transposed."""
    from onnx import helper, numpy_helper

    w_name = f"{node.input[1]}_kn" if _attributes(node).get("transB", 0) else node.input[1]
    if w_name != node.input[1] and w_name not in made:
        w = numpy_helper.to_array(weights[node.input[1]]).T  # N×K → K×N
        graph.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        made.add(w_name)
    has_bias = len(node.input) > 2 and node.input[2]
    product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
    out = [helper.make_node("MatMul", [node.input[0], w_name], [product], node.name)]
    if has_bias:
        bias = [product, node.input[2]]
        out.append(helper.make_node("Add", bias, [node.output[0]], f"{node.name}_bias"))
    return out


def _op_counts(graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _count_quantized_gathers(path: Path) -> int:
    """Gathers whose table is 8-bit (dequantised after the lookup)."""
    import onnx

    graph = onnx.load(str(path)).graph
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    tables = {t.name for t in graph.initializer if t.data_type in eight_bit}
    return sum(1 for n in graph.node if n.op_type == "Gather" and n.input[0] in tables)


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """Silence `quantize_dynamic`'s root-logger advice (run pre-processing first) for one call."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
