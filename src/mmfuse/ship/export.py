"""A saved model folder → one ONNX file that runs without mmfuse or torch, plus a JSON sidecar.

    export_onnx("model/", "model.onnx")                    # fp32
    export_onnx("model/", "model.int8.onnx", quantize="int8")
    onnx_matches_torch("model/", "model.onnx", samples)    # max |ORT − torch| on real samples

The graph takes *preprocessed* tensors (what `SampleLoader.load` returns), one ONNX input per
input name, with the batch as a dynamic first axis:

    <image/audio/video input>    float32  B×<the loaded shape>
    <text input>.input_ids       int64    B×L   (the encoder's `tokenize`; L is dynamic)
    <text input>.attention_mask  int64    B×L
    mask                         bool     B×M   presence, columns in sorted input-name order

and returns `proba_<task>` (float32 B×C, softmax applied) per task. An absent input still needs
a tensor of its shape (the loader's placeholder; any finite values do): the fusion replaces it by
zeros under the mask, so it cannot change the output.

`MultimodalModel.encode` runs each encoder only on the rows that have its input; that gather is
data-dependent and cannot be traced. The export runs every encoder on the full batch instead and
lets the fusion's masking drop the absent rows. In eval mode each row is encoded on its own
(BatchNorm uses running statistics), so present rows get the same features either way, which
`onnx_matches_torch` checks on real files.

The exporter is torch's TorchScript-based one (`torch.onnx.export(..., dynamo=False)`) with
`dynamic_axes`: the dynamo exporter needs `onnxscript` (not a dependency) and a `torch.export`
graph, and would have to prove the batch-size guards of every encoder; tracing these feed-forward
models records the same ops, and `dynamic_axes` frees the batch and text-length axes.

`quantize="int8"` applies onnxruntime's dynamic quantisation (`quantize_dynamic`, int8 weights,
uint8 activations quantised at run time). Its op list has MatMul but not Gemm, and the exporter
writes every 2-D `nn.Linear` as Gemm, so Gemms are first rewritten as MatMul + Add; then the
weights of every Linear (MatMulInteger) and embedding table (Gather, stored 8-bit) are quantised.
Convolutions stay fp32 by default: ORT's dynamic ConvInteger runs without a fast kernel, about
5× slower than the fp32 Conv on CPU (measured with onnxruntime 1.32 on the default encoders),
for a model that is smaller still (`quantize_onnx(..., conv=True)` if size is all that counts;
fast int8 convs need static, calibrated QDQ quantisation). The sidecar lists what was quantised.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mmfuse.errors import MmfuseError
from mmfuse.infer.predictor import stack_samples
from mmfuse.model.multimodal import MultimodalModel, encoder_input, token_validity

FORMAT = 1
MASK = "mask"
QUANTIZE_MODES = ("int8",)
# Ops `quantize_dynamic` turns to integer ops; Conv only on request (see the module docstring).
DYNAMIC_OPS = ("MatMul", "Gather")


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


# ---------------------------------------------------------------------------------- the graph
def graph_inputs(model: MultimodalModel, modalities: Mapping[str, str]) -> list[OnnxInput]:
    """The ONNX inputs of `model` in graph order (input names sorted; the mask comes last)."""
    from mmfuse.features.sample import SampleLoader

    specs = {n: model.encoders[n].input_spec for n in model.names}
    placeholders = SampleLoader(modalities, specs).placeholders
    out = []
    for name in model.names:
        modality = modalities[name]
        if modality == "text":
            keys = _text_keys(model.encoders[name])
            for key in keys:
                shape = [f"{name}_length"]
                out.append(OnnxInput(f"{name}.{key}", name, modality, shape, "int64", key))
        else:
            shape = list(placeholders[name].shape)
            out.append(OnnxInput(name, name, modality, shape, "float32"))
    return out


def _text_keys(encoder) -> list[str]:
    """The tensors the encoder's tokenizer returns, input_ids first."""
    return sorted(encoder.tokenize(["a"]), key=lambda k: (k != "input_ids", k))


class FullBatchModel(nn.Module):
    """`MultimodalModel` as a traceable function of flat tensors → per-task probabilities.

    `forward(*tensors, mask)` takes the tensors of `graph_inputs` in order, then the B×M bool
    mask. Every encoder sees every row; absent rows are dropped by the fusion's masking.
    """

    def __init__(self, model: MultimodalModel, inputs: Sequence[OnnxInput]):
        super().__init__()
        self.model = model
        self.inputs = list(inputs)

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        *values, mask = tensors
        batch: dict[str, Tensor | dict[str, Tensor]] = {}
        for spec, value in zip(self.inputs, values):
            if spec.key is None:
                batch[spec.input] = value
            else:
                batch.setdefault(spec.input, {})[spec.key] = value
        feats, tokens, token_mask = encode_all(self.model, batch, mask)
        logits = self.model.classify(feats, mask, tokens, token_mask)
        return tuple(logits[t].float().softmax(-1) for t in self.model.tasks)


def encode_all(
    model: MultimodalModel, inputs: Mapping[str, Tensor | Mapping[str, Tensor]], mask: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """`model.encode` with every encoder on the whole batch (no data-dependent row selection).

    Equal to `model.encode` on the present rows in eval mode; absent rows hold the encoding of
    the placeholder, which the fusion masks out.
    """
    feats: dict[str, Tensor] = {}
    tokens: dict[str, Tensor] = {}
    token_mask: dict[str, Tensor] = {}
    want_tokens = getattr(model.fusion, "uses_tokens", False)
    for name in model.names:
        encoder, x = model.encoders[name], inputs[name]
        if not want_tokens:
            feats[name] = _export_forward(encoder, x)  # B×D
            continue
        t = encoder.forward_tokens(x)  # B×T×D
        token_mask[name] = token_validity(x, t)  # B×T
        tokens[name] = t
        feats[name] = torch.zeros_like(t[:, 0, :])  # B×D, a shape placeholder once tokens exist
    return feats, tokens, token_mask


def _export_forward(encoder: nn.Module, x) -> Tensor:
    """`encoder(x)`, with an exportable stand-in where an encoder uses an op ONNX lacks.

    `nn.EmbeddingBag` with `padding_idx` has no ONNX export: its mean over the real tokens is
    written out as a masked mean of the token embeddings (the padding row is zero either way,
    and an empty text still gives zeros).
    """
    from mmfuse.encoders.text_bag import PAD_ID, EmbeddingBagEncoder

    if isinstance(encoder, EmbeddingBagEncoder):
        emb = encoder.forward_tokens(x)  # B×L×D, masked positions already mapped to padding
        real = x["input_ids"] != PAD_ID
        if "attention_mask" in x:
            real = real & (x["attention_mask"] != 0)
        real = real.unsqueeze(-1).to(emb.dtype)  # B×L×1
        return (emb * real).sum(dim=1) / real.sum(dim=1).clamp_min(1.0)  # B×D
    return encoder(x)


# ---------------------------------------------------------------------------------- export
def export_onnx(
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    opset: int = 17,
    quantize: str | None = None,
) -> dict:
    """Export the model folder to `out_path` (and its sidecar `<out_path>.json`).

    `quantize="int8"` writes the dynamically quantised model at `out_path` (the fp32 export is
    made in a temporary folder). Returns `{"path", "size", "inputs", "outputs", ...}`.
    """
    from mmfuse.model.saved import load_model

    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ExportError(
            f"quantize={quantize!r} is not supported; use one of {list(QUANTIZE_MODES)} "
            "(--quantize int8) or leave it out for fp32"
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if quantize is not None:
        with tempfile.TemporaryDirectory(prefix="mmfuse-export-") as tmp:
            fp32 = export_onnx(model_dir, Path(tmp) / "fp32.onnx", opset=opset)
            summary = quantize_onnx(fp32["path"], out_path, mode=quantize)
        return summary

    model, config, _ = load_model(model_dir)
    model.eval()
    modalities = {n: config.inputs[n].modality for n in model.names}
    inputs = graph_inputs(model, modalities)
    wrapper = FullBatchModel(model, inputs).eval()
    example = _example_inputs(model, inputs, batch=2)
    outputs = [f"proba_{t}" for t in model.tasks]
    dynamic = {MASK: {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    for spec in inputs:
        dynamic[spec.name] = {0: "batch"}
        if spec.key is not None:
            dynamic[spec.name][1] = spec.shape[0]
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # Tracer notes (shape reads turned into constants) and the notice that the
            # TorchScript exporter is deprecated; the export is checked numerically instead.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            # RNN note about sequence lengths: these models feed fixed-length, unpacked clips.
            warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size")
            torch.onnx.export(
                wrapper,
                tuple(example),
                str(out_path),
                dynamo=False,
                input_names=[s.name for s in inputs] + [MASK],
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
            )
    except Exception as e:  # the exporter raises many types; all mean the same to the user
        encoders = {n: config.inputs[n].encoder for n in model.names}
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        raise ExportError(
            f"the model (fusion {config.fusion.name!r}, encoders {encoders}) could not be "
            f"exported to ONNX opset {opset}: {reason}. Every built-in fusion method exports "
            "with the built-in encoders, so the op is likely in a custom or Hugging Face "
            "encoder; try another --opset (e.g. 18), or another encoder for that input"
        ) from e
    sidecar = {
        "format": FORMAT,
        "source": str(Path(model_dir).resolve()),
        "opset": opset,
        "quantize": None,
        "inputs": [s.to_dict() for s in inputs],
        "mask": {"name": MASK, "dtype": "bool", "columns": list(model.names)},
        "outputs": [
            {"name": f"proba_{h.task}", "task": h.task, "classes": list(h.classes)}
            for h in config.heads
        ],
        "labels": {h.task: list(h.classes) for h in config.heads},
        "preprocessing": {
            n: {
                "modality": modalities[n],
                "column": config.inputs[n].column,
                "spec": model.encoders[n].input_spec.to_dict(),
            }
            for n in model.names
        },
        "fusion": config.fusion.name,
    }
    return _write_sidecar(out_path, sidecar)


def _example_inputs(model: MultimodalModel, inputs: Sequence[OnnxInput], batch: int) -> list:
    """Tracing inputs: zeros of each shape, short token ids, every input present."""
    out = []
    for spec in inputs:
        if spec.key is None:
            out.append(torch.zeros(batch, *spec.shape))
        else:
            tokens = model.encoders[spec.input].tokenize(["a b c"] * batch)
            out.append(tokens[spec.key].long())
    out.append(torch.ones(batch, len(model.names), dtype=torch.bool))
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


def _write_sidecar(out_path: Path, sidecar: dict) -> dict:
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


# ---------------------------------------------------------------------------------- int8
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
    return _write_sidecar(out_path, sidecar)


def gemm_to_matmul(graph) -> int:
    """Rewrite each Gemm with a constant weight as MatMul (+ Add): dynamic quantisation's op list
    has MatMul but not Gemm. Returns how many were rewritten; the graph is changed in place."""
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in graph.graph.initializer}
    made: set[str] = set()  # transposed weights already added (a Linear called twice)
    nodes, changed = [], 0
    for node in graph.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            node.op_type == "Gemm"
            and node.input[1] in weights
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and not attrs.get("transA", 0)
        )
        if not plain:
            nodes.append(node)
            continue
        w_name = f"{node.input[1]}_kn" if attrs.get("transB", 0) else node.input[1]
        if w_name != node.input[1] and w_name not in made:
            w = numpy_helper.to_array(weights[node.input[1]]).T  # N×K → K×N
            graph.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
            made.add(w_name)
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [product], node.name))
        if has_bias:
            nodes.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], f"{node.name}_bias"
                )
            )
        changed += 1
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    # Drop the transposed-away originals that nothing reads any more.
    used = {i for n in graph.graph.node for i in n.input}
    keep = [t for t in graph.graph.initializer if t.name in used]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(keep)
    return changed


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
def _quiet_logging():
    """Silence `quantize_dynamic`'s root-logger advice (run pre-processing first) for one call."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# ---------------------------------------------------------------------------------- running
def onnx_session(onnx_path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for an exported file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


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
    left out or None = missing); torch's side is `Predictor.predict_tensors`, the served path.
    """
    from mmfuse.infer.predictor import Predictor

    predictor = Predictor(model_dir)
    prepared = [predictor.preprocess(s) for s in samples]
    expected = predictor.predict_tensors(prepared)
    sidecar = read_sidecar(onnx_path)
    inputs, mask = stack_samples(prepared, predictor.names, predictor.loader.placeholders)
    tokenizers = _tokenizers(predictor.model, predictor.modalities)
    got = onnx_session(onnx_path).run(None, onnx_feeds(inputs, mask, sidecar, tokenizers))
    diff = 0.0
    for out, proba in zip(sidecar["outputs"], got):
        want = np.array(
            [[p.tasks[out["task"]]["probabilities"][c] for c in out["classes"]] for p in expected]
        )
        diff = max(diff, float(np.abs(proba - want).max()))
    return diff


def _tokenizers(model: MultimodalModel, modalities: Mapping[str, str]) -> dict:
    return {n: model.encoders[n].tokenize for n in model.names if modalities[n] == "text"}


# ---------------------------------------------------------------------------------- report
@dataclass
class Measured:
    """One row of the before/after table."""

    name: str
    size: int  # bytes on disk
    latency_1: float  # median ms per sample at batch 1
    latency_32: float  # median ms per sample at batch 32
    accuracy: dict[str, float]  # per task
    extra: dict | None = None  # more size columns (safetensors.gz for pruned models)


class EvalData:
    """A labelled manifest loaded once for a model's inputs: the rows as collated batches."""

    def __init__(self, model_dir: str | os.PathLike, manifest, *, batch_size: int = 32):
        from mmfuse.data.manifest import read_manifest
        from mmfuse.infer.dataset import MultimodalDataset, Skipped, collate
        from mmfuse.model.saved import load_model

        model, config, _ = load_model(model_dir)
        roles = {spec.column: spec.modality for spec in config.inputs.values()}
        tasks = {h.task: list(h.classes) for h in config.heads}
        if not hasattr(manifest, "frame"):
            manifest = read_manifest(manifest, label=list(tasks), modalities=roles)
        specs = {n: model.encoders[n].input_spec for n in model.names}
        dataset = MultimodalDataset(manifest, config.inputs, specs, tasks)
        items = [dataset[i] for i in range(len(dataset))]
        self.items = [i for i in items if not isinstance(i, Skipped)]
        if not self.items:
            raise ExportError(f"{manifest.source}: no row could be loaded to measure on")
        self.source = manifest.source
        self.tasks = tasks
        self.modalities = {n: config.inputs[n].modality for n in model.names}
        self.tokenizers = _tokenizers(model, self.modalities)
        self.batches = [
            collate(self.items[i : i + batch_size]) for i in range(0, len(self.items), batch_size)
        ]
        cycled = [self.items[i % len(self.items)] for i in range(32)]
        self.timing = {1: collate(self.items[:1]), 32: collate(cycled)}


def torch_runner(model: MultimodalModel) -> Callable[[dict], dict[str, np.ndarray]]:
    """Batch → per-task probabilities through the model's own (masked) forward."""
    model.eval()

    @torch.no_grad()
    def run(batch: dict) -> dict[str, np.ndarray]:
        inputs = {n: encoder_input(model.encoders[n], v) for n, v in batch["inputs"].items()}
        logits = model(inputs, batch["mask"])
        return {t: v.float().softmax(-1).numpy() for t, v in logits.items()}

    return run


def onnx_runner(
    onnx_path: str | os.PathLike, tokenizers: Mapping, threads: int | None = None
) -> Callable:
    """Batch → per-task probabilities through onnxruntime."""
    session = onnx_session(onnx_path, threads)
    sidecar = read_sidecar(onnx_path)
    tasks = [o["task"] for o in sidecar["outputs"]]

    def run(batch: dict) -> dict[str, np.ndarray]:
        feeds = onnx_feeds(batch["inputs"], batch["mask"], sidecar, tokenizers)
        return dict(zip(tasks, session.run(None, feeds)))

    return run


def measure(
    name: str,
    run: Callable[[dict], dict[str, np.ndarray]],
    data: EvalData,
    size: int,
    *,
    repeats: int = 20,
    extra: dict | None = None,
) -> Measured:
    """Accuracy over `data`, then median per-sample latency at batch 1 and batch 32."""
    correct = {t: 0 for t in data.tasks}
    labelled = {t: 0 for t in data.tasks}
    for batch in data.batches:
        proba = run(batch)
        for t in data.tasks:
            y = batch["labels"][t].numpy()
            keep = y >= 0
            correct[t] += int((proba[t].argmax(axis=1)[keep] == y[keep]).sum())
            labelled[t] += int(keep.sum())
    accuracy = {t: correct[t] / labelled[t] if labelled[t] else float("nan") for t in data.tasks}
    latency = {}
    for batch_size, batch in data.timing.items():
        for _ in range(3):  # warm-up: allocator, lazy kernels
            run(batch)
        times = []
        for _ in range(max(1, repeats if batch_size == 1 else repeats // 4)):
            start = time.perf_counter()
            run(batch)
            times.append((time.perf_counter() - start) * 1000 / batch_size)
        latency[batch_size] = float(np.median(times))
    return Measured(name, size, latency[1], latency[32], accuracy, extra)


def format_report(rows: Sequence[Measured], title: str = "") -> str:
    """The before/after table (plain text, aligned), with the change of the last row vs the first.

    Columns: size (MB on disk), any extra size columns, median ms/sample at batch 1 and 32,
    accuracy per task.
    """
    extra_cols = []
    for r in rows:
        for k in r.extra or {}:
            if k not in extra_cols:
                extra_cols.append(k)
    tasks = list(rows[0].accuracy)
    acc_cols = ["accuracy"] if len(tasks) == 1 else [f"acc:{t}" for t in tasks]
    header = ["model", "size MB", *[f"{k} MB" for k in extra_cols]]
    header += ["ms/sample b=1", "ms/sample b=32", *acc_cols]
    table = []
    for r in rows:
        cells = [r.name, _mb(r.size)]
        cells += [_mb((r.extra or {}).get(k)) for k in extra_cols]
        cells += [f"{r.latency_1:.3f}", f"{r.latency_32:.3f}"]
        cells += [f"{r.accuracy[t]:.4f}" for t in tasks]
        table.append(cells)
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    lines = [title] if title else []
    for i, row in enumerate([header, *table]):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        sizes = [f"size ×{last.size / first.size:.2f}"]
        for k in extra_cols:
            a, b = (first.extra or {}).get(k), (last.extra or {}).get(k)
            if a and b:
                sizes.append(f"{k} ×{b / a:.2f}")
        lines.append(
            f"{last.name} vs {first.name}: {', '.join(sizes)}, "
            f"batch-1 latency ×{last.latency_1 / first.latency_1:.2f}, batch-32 latency "
            f"×{last.latency_32 / first.latency_32:.2f}, accuracy "
            + ", ".join(f"{last.accuracy[t] - first.accuracy[t]:+.4f}" for t in tasks)
        )
    return "\n".join(lines)


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.3f}"


def export_report(
    model_dir: str | os.PathLike,
    onnx_paths: Sequence[tuple[str, str | os.PathLike]],
    manifest,
    *,
    repeats: int = 20,
    threads: int | None = None,
) -> list[Measured]:
    """Measure the torch model folder and each `(name, onnx file)` on a labelled manifest.

    `threads` sets both runtimes' intra-op threads (default: each runtime's own choice).
    """
    from mmfuse.model.saved import WEIGHTS, load_model

    data = EvalData(model_dir, manifest)
    model, _, _ = load_model(model_dir)
    with torch_threads(threads):
        size = (Path(model_dir) / WEIGHTS).stat().st_size
        rows = [measure("torch", torch_runner(model), data, size, repeats=repeats)]
    for name, path in onnx_paths:
        runner = onnx_runner(path, data.tokenizers, threads)
        rows.append(measure(name, runner, data, Path(path).stat().st_size, repeats=repeats))
    return rows


@contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set to `threads` inside the block (None: unchanged)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------- CLI
def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `mmfuse export` (the integrator adds the command and --debug)."""
    p.add_argument("model_dir", help="model folder written by `mmfuse train` (its --out)")
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


def export_command(args: argparse.Namespace) -> int:
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
    out = Path(args.out) if args.out else Path(args.model_dir) / "model.onnx"
    if args.quantize is None:
        summary = export_onnx(args.model_dir, out, opset=args.opset)
        print(_summary_line(summary))
        if args.manifest:
            pairs = [("onnx fp32", out)]
            rows = export_report(
                args.model_dir, pairs, args.manifest, repeats=args.repeats, threads=args.threads
            )
            print(format_report(rows, f"on {args.manifest}:"))
        return 0
    with tempfile.TemporaryDirectory(prefix="mmfuse-export-") as tmp:
        fp32 = export_onnx(args.model_dir, Path(tmp) / "model.onnx", opset=args.opset)
        summary = quantize_onnx(fp32["path"], out, mode=args.quantize)
        print(_summary_line(summary))
        print(f"quantised: {summary['quantized_ops']}")
        if args.manifest:
            pairs = [("onnx fp32", fp32["path"]), (f"onnx {args.quantize}", out)]
            rows = export_report(
                args.model_dir, pairs, args.manifest, repeats=args.repeats, threads=args.threads
            )
            print(format_report(rows, f"on {args.manifest}:"))
    return 0


def _summary_line(summary: dict) -> str:
    return (
        f"wrote {summary['path']} ({summary['size'] / 1e6:.3f} MB) and {summary['sidecar']}\n"
        f"inputs: {', '.join(summary['inputs'])}\noutputs: {', '.join(summary['outputs'])}"
    )
