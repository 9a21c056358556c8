"""The JSON file written beside every exported .onnx: what the graph takes and returns.

`<model>.onnx.json` lists the graph inputs (`OnnxInput`), the presence mask, the outputs and
their classes, and each input's preprocessing, so the file can be run without mmfuse.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from mmfuse.errors import MmfuseError

FORMAT = 1
MASK = "mask"


class ExportError(MmfuseError):
    """The model cannot be exported, or the exported file disagrees with the torch model."""


@dataclass
class OnnxInput:
    """One input of the ONNX graph: which model input it feeds, its dtype and shape (no batch)."""

    name: str  # the ONNX input name: the input name, or "<input>.<key>" for text
    input: str  # the model input (presence-mask column) it belongs to
    modality: str
    shape: list  # without the batch axis; a str names a dynamic axis
    dtype: str  # "float32" or "int64"
    key: str | None = None  # text: the tokenizer output it carries (input_ids, attention_mask)

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["key"] is None:
            del out["key"]
        return out


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def read_sidecar(onnx_path: str | os.PathLike) -> dict:
    path = sidecar_path(onnx_path)
    if not path.is_file():
        raise ExportError(
            f"{path} is missing; it is written beside the .onnx file by `mmfuse export`, so "
            "export again rather than copying the .onnx alone"
        )
    return json.loads(path.read_text())


def write_sidecar(out_path: Path, sidecar: dict) -> dict:
    """Write `<out_path>.json`; returns the export summary (`{"path", "size", "inputs", ...}`)."""
    sidecar_path(out_path).write_text(json.dumps(sidecar, indent=2) + "\n")
    return {
        "path": str(out_path),
        "size": out_path.stat().st_size,
        "sidecar": str(sidecar_path(out_path)),
        "inputs": [i["name"] for i in sidecar["inputs"]] + [MASK],
        "outputs": [o["name"] for o in sidecar["outputs"]],
        "quantize": sidecar["quantize"],
        "quantized_ops": sidecar.get("quantized_ops"),
    }
