"""Running an exported file with onnxruntime: the session, its feeds, and the parity check.

onnx_matches_torch("model/", "model.onnx", samples)    # max |ORT − torch| on real samples
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import Tensor

from mmfuse.model.multimodal import MultimodalModel
from mmfuse.ship.sidecar import read_sidecar


def onnx_session(onnx_path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for an exported file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def tokenizers(model: MultimodalModel, modalities: Mapping[str, str]) -> dict:
    """`{text input: its encoder's tokenize}`: the graph takes token ids, not strings."""
    return {n: model.encoders[n].tokenize for n in model.names if modalities[n] == "text"}


def onnx_feeds(
    inputs: Mapping[str, Tensor | list[str]],
    mask: Tensor,
    sidecar: Mapping,
    tokenizers: Mapping[str, Callable[[list[str]], dict]],
) -> dict[str, np.ndarray]:
    """Batch inputs (tensors; text as strings) → the session's feed dict."""
    feeds: dict[str, np.ndarray] = {}
    tokens: dict[str, dict] = {}
    for spec in sidecar["inputs"]:
        value = inputs[spec["input"]]
        if "key" in spec:
            if spec["input"] not in tokens:
                tokens[spec["input"]] = tokenizers[spec["input"]](list(value))
            feeds[spec["name"]] = tokens[spec["input"]][spec["key"]].numpy().astype(np.int64)
        else:
            feeds[spec["name"]] = value.numpy().astype(np.float32, copy=False)
    feeds[sidecar["mask"]["name"]] = mask.numpy().astype(bool)
    return feeds


def onnx_matches_torch(
    model_dir: str | os.PathLike,
    onnx_path: str | os.PathLike,
    samples: Sequence[Mapping[str, object]],
) -> float:
    """Max |onnxruntime − torch| over every probability of `samples`, one batch.

    `samples` are `Predictor.predict` requests (`{input or modality: path or text}`, an input
    left out or None = missing), preprocessed and batched by the `Predictor`; torch's side is
    `mmfuse.infer.engine.forward`, the path every prediction takes.
    """
    from mmfuse.infer.engine import forward
    from mmfuse.infer.predictor import Predictor

    predictor = Predictor(model_dir)
    batch = predictor.batch([predictor.preprocess(s) for s in samples])
    expected = forward(predictor.model, batch["inputs"], batch["mask"]).probabilities
    sidecar = read_sidecar(onnx_path)
    text = tokenizers(predictor.model, predictor.modalities)
    feeds = onnx_feeds(batch["inputs"], batch["mask"], sidecar, text)
    got = onnx_session(onnx_path).run(None, feeds)
    diff = 0.0
    for out, proba in zip(sidecar["outputs"], got):
        diff = max(diff, float(np.abs(proba - expected[out["task"]].numpy()).max()))
    return diff
