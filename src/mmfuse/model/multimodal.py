"""`MultimodalModel`: one encoder per input, one fusion module, one head per task.

Everything is keyed by input name (sorted, the presence mask's column order) and by task, never
by position. An input absent from a row is not encoded at all: each encoder sees only the rows
that have its input, so BatchNorm statistics are never polluted by placeholder zeros, and the
fusion module learns of the gap from the mask. Features computed earlier (the trainer's cache of
a frozen encoder) can be passed in place of an input.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfuse import encoders as encoder_registry
from mmfuse import fusion as fusion_registry
from mmfuse.model.config import ConfigError, ModelConfig
from mmfuse.model.heads import ClassifierHead
from mmfuse.model.scaler import FeatureScaler

Batch = Mapping[str, "Tensor | Mapping[str, Tensor]"]


class MultimodalModel(nn.Module):
    """Encoders (a dict by input name), a fusion module and heads (a dict by task).

    `forward(inputs, mask, features=None)` → `{task: B×C logits}`. `inputs[name]` is the
    preprocessed batch for that input (text: the dict its encoder's `tokenize` returns), `mask`
    is B×M bool in sorted input-name order, and `features[name]` (B×D) replaces encoding.
    `scalers[name]` (a `FeatureScaler`) standardises that input's B×D vectors before fusion.
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        fusion: nn.Module,
        heads: Mapping[str, nn.Module],
        scalers: Mapping[str, nn.Module] | None = None,
    ):
        super().__init__()
        self.names: list[str] = sorted(encoders)
        self.encoders = nn.ModuleDict({n: encoders[n] for n in self.names})
        self.fusion = fusion
        self.heads = nn.ModuleDict(dict(heads))
        scalers = dict(scalers or {})
        if set(scalers) - set(self.names):
            raise ConfigError(
                f"scalers given for {sorted(set(scalers) - set(self.names))}, which are not "
                f"inputs {self.names}"
            )
        self.scalers = nn.ModuleDict({n: scalers[n] for n in sorted(scalers)})
        # One temperature per task (in head order), fitted after training; a buffer, so the
        # safetensors file and the ONNX graph carry it. 1 leaves the logits as trained.
        self.register_buffer("temperature", torch.ones(len(self.heads)))
        if getattr(fusion, "modalities", None) not in (None, tuple(self.names)):
            raise ConfigError(
                f"fusion was built for {list(fusion.modalities)} but the encoders are "
                f"{self.names}; build the fusion with input_dims keyed by the input names"
            )

    @classmethod
    def from_config(cls, config: ModelConfig) -> MultimodalModel:
        encoders = {}
        for name, spec in config.inputs.items():
            encoders[name] = encoder_registry.build(spec.modality, spec.encoder, **spec.options)
        dims = {n: encoders[n].output_dim for n in sorted(encoders)}
        fusion = config.fusion
        decision = fusion_registry.FUSIONS.get(fusion.name).is_decision_level
        if decision:
            if len(config.heads) != 1:
                raise ConfigError(
                    f"fusion {fusion.name!r} outputs class logits itself, so it serves one task, "
                    f"not {len(config.heads)}; use a feature-level fusion (e.g. attention) for "
                    "multi-task models"
                )
            out_dim = len(config.heads[0].classes)
        else:
            out_dim = fusion.dim
        fuser = fusion_registry.build(fusion.name, dims, out_dim, **fusion.options)
        heads: dict[str, nn.Module] = {}
        for h in config.heads:
            heads[h.task] = (
                nn.Identity()
                if decision
                else ClassifierHead(out_dim, len(h.classes), h.dropout, h.hidden)
            )
        # A token fusion reads the encoders' token sequences, never the vectors a scaler
        # acts on, so it gets none.
        by_tokens = fusion_registry.FUSIONS.get(fusion.name).uses_tokens
        scalers = {
            name: FeatureScaler(encoders[name].output_dim)
            for name, spec in config.inputs.items()
            if spec.standardize and not by_tokens
        }
        model = cls(encoders, fuser, heads, scalers)
        for name, spec in config.inputs.items():
            if spec.mode == "freeze" or spec.finetune_after > 0:
                model.encoders[name].freeze()
        return model

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def temperatures(self) -> dict[str, float]:
        """`{task: T}`: each task's logits are divided by T (1: uncalibrated)."""
        return dict(zip(self.tasks, self.temperature.tolist()))

    def set_temperatures(self, temperatures: Mapping[str, float]) -> None:
        for i, task in enumerate(self.tasks):
            if task in temperatures:
                self.temperature[i] = float(temperatures[task])

    def encode(
        self,
        inputs: Batch,
        mask: Tensor,
        features: Mapping[str, Tensor] | None = None,
        *,
        vectors: bool = False,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Per input: B×D features (zeros where absent); with token fusion also tokens/masks.
        `vectors=True` gives every input's B×D vector even when the fusion takes tokens."""
        features = features or {}
        feats: dict[str, Tensor] = {}
        tokens: dict[str, Tensor] = {}
        token_mask: dict[str, Tensor] = {}
        want_tokens = getattr(self.fusion, "uses_tokens", False) and not vectors
        for j, name in enumerate(self.names):
            if name in features:
                feats[name] = features[name]
                continue
            feats[name], t, t_mask = self.encode_input(
                name, inputs.get(name), mask[:, j], want_tokens
            )
            if t is not None:
                tokens[name], token_mask[name] = t, t_mask
        return feats, tokens, token_mask

    def encode_input(self, name: str, x, present: Tensor, want_tokens: bool):
        """`(B×D vector, B×T×D tokens or None, B×T token mask or None)` of input `name` on
        the rows where `present` (B bool) holds; absent rows are zeros."""
        encoder = self.encoders[name]
        batch = present.shape[0]
        rows = present.nonzero().flatten()  # only rows that have this input
        if rows.numel() == 0:  # no row has it: nothing to encode, the mask hides it
            return torch.zeros(batch, encoder.output_dim, device=present.device), None, None
        x = _take(x, rows)
        if not want_tokens:
            return _scatter(encoder(x), rows, batch), None, None  # B×D
        t = encoder.forward_tokens(x)  # b×T×D
        # The vector is only a shape placeholder once tokens are given.
        vector = t.new_zeros(batch, encoder.output_dim)
        return vector, _scatter(t, rows, batch), _scatter(token_validity(x, t), rows, batch)

    def classify(
        self,
        feats: Mapping[str, Tensor],
        mask: Tensor,
        tokens: Mapping[str, Tensor] | None = None,
        token_mask: Mapping[str, Tensor] | None = None,
        return_weights: bool = False,
    ):
        """Fuse per-input features under `mask` and apply every head → `{task: B×C}`."""
        fused = self.fuse(feats, mask, tokens, token_mask, return_weights)
        weights = None
        if return_weights:
            fused, weights = fused
        logits = {
            task: head(fused) / self.temperature[i]
            for i, (task, head) in enumerate(self.heads.items())
        }
        return (logits, weights) if return_weights else logits

    def fuse(
        self,
        feats: Mapping[str, Tensor],
        mask: Tensor,
        tokens: Mapping[str, Tensor] | None = None,
        token_mask: Mapping[str, Tensor] | None = None,
        return_weights: bool = False,
    ):
        """The fused B×F features the heads take (`mmfuse embed`'s vectors), from `encode`'s
        output; with `return_weights`, also the B×M fusion weights."""
        kwargs = {}
        if tokens:
            kwargs = {"tokens": tokens, "token_mask": token_mask}
        if len(self.scalers):
            feats = self.standardize(feats, mask)
        return self.fusion(feats, mask, return_weights=return_weights, **kwargs)

    def standardize(self, feats: Mapping[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """`feats` with each scaled input's B×D vectors standardised (absent rows stay 0)."""
        out = dict(feats)
        for name, scaler in self.scalers.items():
            out[name] = scaler(feats[name], mask[:, self.names.index(name)])
        return out

    def forward(
        self,
        inputs: Batch,
        mask: Tensor,
        features: Mapping[str, Tensor] | None = None,
        return_weights: bool = False,
    ):
        feats, tokens, token_mask = self.encode(inputs, mask, features)
        return self.classify(feats, mask, tokens, token_mask, return_weights)


def encoder_input(encoder: nn.Module, value, device: torch.device | str | None = None):
    """A collated batch value as `encoder` takes it, on `device`: text (a list of strings)
    through the encoder's own tokenizer, tensors moved."""
    if isinstance(value, list):
        value = encoder.tokenize(value)
        return {k: v.to(device) for k, v in value.items()}
    return value.to(device, non_blocking=True)


def token_validity(x, tokens: Tensor) -> Tensor:
    """B×T bool: which of an encoder's output tokens are real (text: its attention mask)."""
    attn = x.get("attention_mask") if isinstance(x, Mapping) else None
    if attn is not None and attn.shape[1] == tokens.shape[1]:
        return attn.bool()
    return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


def _take(x, rows: Tensor):
    if isinstance(x, Mapping):
        return {k: v[rows] for k, v in x.items()}
    return x[rows]


def _scatter(values: Tensor, rows: Tensor, batch: int) -> Tensor:
    """Rows `rows` of a B×… tensor set to `values`, the rest zero (differentiable)."""
    if values.shape[0] == batch:  # every row present: nothing to scatter
        return values
    out = values.new_zeros((batch, *values.shape[1:]))
    return out.index_copy(0, rows, values)
