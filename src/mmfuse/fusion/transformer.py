"""Cross-modal transformer fusion: all modalities' tokens plus a [CLS] token in one encoder."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmfuse.fusion.base import (
    Fusion,
    check_positive_int,
    check_probability,
    masked_softmax,
    register,
)


class Block(nn.Module):
    """Pre-norm transformer encoder layer; can also return [CLS]'s attention over the sequence.

    Written out rather than `nn.TransformerEncoderLayer`, which cannot return attention
    weights, and rather than `nn.MultiheadAttention`, whose CPU inference fast path with a
    padding mask is many times slower than `scaled_dot_product_attention`.
    """

    def __init__(self, dim: int, num_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim)
        )

    def forward(self, x: Tensor, keep: Tensor, cls_weights: bool = False):
        """x: B×L×d; keep: B×L bool, False for keys to ignore. Returns x and B×L or None."""
        b, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(dim, dim=2)  # B×L×d each
        q, k, v = (t.view(b, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        attn_mask = keep[:, None, None, :]  # B×1×1×L, broadcast over heads and queries
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, length, dim)))
        x = x + self.drop(self.ff(self.norm2(x)))
        weights = None
        if cls_weights:
            # Only [CLS]'s row (query 0) is needed: B×H×L, averaged over heads → B×L.
            scores = (q[:, :, 0:1] @ k.transpose(2, 3)).squeeze(2) / math.sqrt(q.shape[-1])
            weights = masked_softmax(scores, keep[:, None, :], dim=2).mean(dim=1)
        return x, weights


@register("transformer")
class TransformerFusion(Fusion):
    """A [CLS] token attends jointly over every modality's tokens; `out = Linear(LN(CLS))`.

    Each modality contributes its token sequence (`tokens[m]`: B×T_m×D_m, same D_m as its
    vector) when given, otherwise its feature vector as a single token. Tokens are projected to
    `d_model`, tagged with a learned modality embedding and concatenated after [CLS]. Tokens of
    missing modalities and padded tokens (`token_mask[m]` False) are masked out as keys;
    [CLS] itself is never masked, so no attention row is empty. No positional embedding is
    added: encoders' token outputs already carry their own positions.

    The returned weights are the last layer's [CLS] attention (averaged over heads, before
    attention dropout) summed per modality and renormalised over the modality tokens (i.e.
    without [CLS]'s attention to itself).
    """

    uses_tokens = True
    has_weights = True

    def __init__(
        self,
        input_dims: Mapping[str, int],
        output_dim: int,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        ff_dim: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__(input_dims, output_dim)
        self.d_model = check_positive_int("d_model", d_model)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.ff_dim = check_positive_int("ff_dim", ff_dim)
        self.dropout = check_probability("dropout", dropout)
        if d_model % num_heads:
            raise ValueError(
                f"d_model={d_model} must be divisible by num_heads={num_heads}; "
                f"e.g. num_heads={next(h for h in (8, 4, 2, 1) if d_model % h == 0)}"
            )
        self.projections = nn.ModuleDict(
            {m: nn.Linear(d, d_model) for m, d in self.input_dims.items()}
        )
        self.modality_embedding = nn.Parameter(torch.randn(self.num_modalities, d_model) * 0.02)
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        self.blocks = nn.ModuleList(
            [Block(d_model, num_heads, ff_dim, dropout) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, output_dim)

    def config(self) -> dict:
        return {
            "d_model": self.d_model,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "ff_dim": self.ff_dim,
            "dropout": self.dropout,
        }

    def forward(
        self,
        features: Mapping[str, Tensor],
        mask: Tensor | None = None,
        *,
        tokens: Mapping[str, Tensor] | None = None,
        token_mask: Mapping[str, Tensor] | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """As `Fusion.forward`, plus optional token sequences for any subset of modalities.

        `tokens[m]`: B×T_m×D_m; `token_mask[m]`: B×T_m bool, True = real token, False = padding
        (the same polarity as the presence mask). A modality without tokens uses its vector.
        """
        xs, mask = self.prepare(features, mask)
        seqs, valids = self.token_sequences(xs, mask, tokens or {}, token_mask or {})
        batch = mask.shape[0]
        cls = self.cls.to(xs[0].dtype).expand(batch, 1, self.d_model)  # B×1×d
        x = torch.cat([cls, *seqs], dim=1)  # B×(1+ΣT_m)×d
        keep = torch.cat([mask.new_ones(batch, 1), *valids], dim=1)  # B×(1+ΣT_m)
        weights = None
        for i, block in enumerate(self.blocks):
            x, weights = block(x, keep, cls_weights=i == len(self.blocks) - 1)
        out = self.out(self.norm(x[:, 0]))  # B×D
        return self._finish(out, self.modality_weights(weights, valids), return_weights)

    def token_sequences(
        self,
        xs: list[Tensor],
        mask: Tensor,
        tokens: Mapping[str, Tensor],
        token_mask: Mapping[str, Tensor],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per modality: embedded tokens B×T_m×d and which of them are real and present B×T_m."""
        unknown = sorted(set(tokens) - set(self.modalities))
        if unknown:
            raise ValueError(
                f"tokens has unknown modality(ies) {unknown}; valid: {list(self.modalities)}"
            )
        stray = sorted(set(token_mask) - set(tokens))
        if stray:
            raise ValueError(
                f"token_mask has entries {stray} without matching tokens; give tokens[m] too, "
                f"or drop token_mask[m]"
            )
        batch = mask.shape[0]
        seqs, valids = [], []
        for j, m in enumerate(self.modalities):
            present = mask[:, j, None]  # B×1
            if m in tokens:
                t = tokens[m]
                if t.dim() != 3 or t.shape[0] != batch or t.shape[2] != self.input_dims[m]:
                    raise ValueError(
                        f"tokens[{m!r}] must have shape {batch}×T×{self.input_dims[m]} "
                        f"(B×T×D_m), got {tuple(t.shape)}"
                    )
                real = token_mask.get(m)
                if real is None:
                    real = torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
                elif real.dtype != torch.bool or tuple(real.shape) != tuple(t.shape[:2]):
                    raise ValueError(
                        f"token_mask[{m!r}] must be a bool tensor of shape {tuple(t.shape[:2])} "
                        f"(True = real token), got {real.dtype} {tuple(real.shape)}"
                    )
                valid = real & present  # B×T_m
                # Zero what is masked: attention weight 0 times a NaN value would still be NaN.
                t = torch.where(valid[:, :, None], t, 0.0)
            else:
                t, valid = xs[j][:, None, :], present  # B×1×D_m, B×1
            seqs.append(self.projections[m](t) + self.modality_embedding[j])  # B×T_m×d
            valids.append(valid)
        return seqs, valids

    def modality_weights(self, cls_attn: Tensor, valids: list[Tensor]) -> Tensor:
        """[CLS] attention (B×L) summed per modality, renormalised over modality tokens: B×M."""
        cls_row = cls_attn[:, 1:]  # B×ΣT_m
        cls_row = torch.where(torch.cat(valids, dim=1), cls_row, 0.0)
        per_modality = torch.stack(
            [chunk.sum(dim=1) for chunk in cls_row.split([v.shape[1] for v in valids], dim=1)],
            dim=1,
        )  # B×M
        return per_modality / per_modality.sum(dim=1, keepdim=True).clamp_min(1e-12)
