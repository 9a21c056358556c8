"""A saved model folder → one ONNX file that runs without mmfuse or torch, plus a JSON sidecar.

    export_onnx("model/", "model.onnx")                    # fp32
    export_onnx("model/", "model.int8.onnx", quantize="int8")

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
`mmfuse.ship.runtime.onnx_matches_torch` checks on real files.

The exporter is torch's TorchScript-based one (`torch.onnx.export(..., dynamo=False)`) with
`dynamic_axes`: the dynamo exporter needs `onnxscript` (not a dependency) and a `torch.export`
graph, and would have to prove the batch-size guards of every encoder; tracing these feed-forward
models records the same ops, and `dynamic_axes` frees the batch and text-length axes.

An ensemble folder exports as ONE graph that runs every member of weight > 0
and returns the weighted mean of their calibrated probabilities (tempered by the ensemble's T):
the service, the sidecar and the runtime then need nothing new, each input is preprocessed and
fed once, and ONNX Runtime schedules the members in one call; one graph per member would make
every consumer re-implement the weighting.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mmfuse.model.ensemble import EnsembleModel
from mmfuse.model.multimodal import MultimodalModel, token_validity
from mmfuse.ship.quantize import check_mode, quantize_onnx
from mmfuse.ship.sidecar import FORMAT, MASK, ExportError, OnnxInput, write_sidecar


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
        if isinstance(self.model, EnsembleModel):
            # One graph for the whole ensemble: each member encodes (identical frozen encoders
            # once), the weighted mean follows.
            encoded = self.model.encode(batch, mask, encode_input=encode_input_all)
        else:
            encoded = encode_all(self.model, batch, mask)
        feats, tokens, token_mask = encoded
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
    for j, name in enumerate(model.names):
        feats[name], t, t_mask = encode_input_all(
            model, name, inputs[name], mask[:, j], want_tokens
        )
        if t is not None:
            tokens[name], token_mask[name] = t, t_mask
    return feats, tokens, token_mask


def encode_input_all(model: MultimodalModel, name: str, x, present: Tensor, want_tokens: bool):
    """`MultimodalModel.encode_input` on every row of the batch, `present` or not."""
    encoder = model.encoders[name]
    if not want_tokens:
        return _export_forward(encoder, x), None, None  # B×D
    t = encoder.forward_tokens(x)  # B×T×D
    # The vector is a shape placeholder once tokens exist.
    return torch.zeros_like(t[:, 0, :]), t, token_validity(x, t)


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
    check_mode(quantize)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if quantize is None:
        return _export_fp32(model_dir, out_path, opset)
    with tempfile.TemporaryDirectory(prefix="mmfuse-export-") as tmp:
        fp32 = _export_fp32(model_dir, Path(tmp) / "fp32.onnx", opset)
        return quantize_onnx(fp32["path"], out_path, mode=quantize)


def _export_fp32(model_dir: str | os.PathLike, out_path: Path, opset: int) -> dict:
    from mmfuse.model.saved import load_model

    model, config, _ = load_model(model_dir)
    model.eval()
    modalities = {n: config.inputs[n].modality for n in model.names}
    inputs = graph_inputs(model, modalities)
    try:
        _trace(model, inputs, out_path, opset)
    except Exception as e:  # the exporter raises many types; all mean the same to the user
        encoders = {n: config.inputs[n].encoder for n in model.names}
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        raise ExportError(
            f"the model (fusion {config.fusion.name!r}, encoders {encoders}) could not be "
            f"exported to ONNX opset {opset}: {reason}. Every built-in fusion method exports "
            "with the built-in encoders, so the op is likely in a custom or Hugging Face "
            "encoder; try another --opset (e.g. 18), or another encoder for that input"
        ) from e
    sidecar = _sidecar(model_dir, model, config, inputs, opset)
    return write_sidecar(out_path, sidecar)


def _trace(model: MultimodalModel, inputs: Sequence[OnnxInput], out_path: Path, opset: int):
    """`torch.onnx.export` of the full-batch model with dynamic batch and text-length axes."""
    wrapper = FullBatchModel(model, inputs).eval()
    outputs = [f"proba_{t}" for t in model.tasks]
    dynamic = {MASK: {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    for spec in inputs:
        dynamic[spec.name] = {0: "batch"}
        if spec.key is not None:
            dynamic[spec.name][1] = spec.shape[0]
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
            tuple(_example_inputs(model, inputs, batch=2)),
            str(out_path),
            dynamo=False,
            input_names=[s.name for s in inputs] + [MASK],
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
        )


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


def _sidecar(model_dir, model: MultimodalModel, config, inputs: Sequence[OnnxInput], opset: int):
    """The sidecar of an fp32 export: graph inputs, mask columns, outputs, preprocessing."""
    return {
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
                "modality": config.inputs[n].modality,
                "column": config.inputs[n].column,
                "spec": model.encoders[n].input_spec.to_dict(),
            }
            for n in model.names
        },
        "fusion": config.fusion.name,
    }
