"""A bag-of-words text encoder over hashed tokens: no vocabulary to fit, fast, a strong baseline.

Tokens are hashed with CRC32 (stable across processes and machines, unlike Python's salted
`hash()`), so a saved model maps the same word to the same embedding row everywhere.
"""

from __future__ import annotations

import re
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from mmfuse.encoders.base import Encoder, check_shape, register
from mmfuse.features.spec import TextSpec

# Words (letters, digits, underscore) and single punctuation marks.
TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
PAD_ID = 0


def hash_token(token: str, vocab_size: int) -> int:
    """Bucket 1..vocab_size-1 for `token`; 0 is kept for padding."""
    return zlib.crc32(token.encode("utf-8")) % (vocab_size - 1) + 1


def hash_tokenize(
    texts: list[str], vocab_size: int, max_length: int, lowercase: bool = True
) -> dict[str, torch.Tensor]:
    """`{"input_ids": B×L long, "attention_mask": B×L long}`, padded to the longest text."""
    if isinstance(texts, str):
        raise TypeError("tokenize takes a list of strings; wrap a single text as [text]")
    ids = []
    for text in texts:
        words = TOKEN_PATTERN.findall(text.lower() if lowercase else text)[:max_length]
        ids.append([hash_token(w, vocab_size) for w in words])
    length = max([1, *(len(row) for row in ids)])  # an all-empty batch still gets one column
    input_ids = torch.full((len(ids), length), PAD_ID, dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": (input_ids != PAD_ID).long()}


def check_text_input(x, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, dict) or "input_ids" not in x:
        raise TypeError(
            f"{what}: expected a dict with 'input_ids' and 'attention_mask' (B×L long), got "
            f"{type(x).__name__}; make it with encoder.tokenize(list_of_texts)"
        )
    input_ids = x["input_ids"]
    check_shape(input_ids, ("B", "L"), f"{what} input_ids")
    mask = x.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(input_ids)
    check_shape(mask, tuple(input_ids.shape), f"{what} attention_mask")
    return input_ids, mask


class EmbeddingBagEncoder(Encoder):
    modality = "text"

    def __init__(self, vocab_size: int = 2**16, dim: int = 128, max_length: int = 64):
        super().__init__()
        self.input_spec = TextSpec(tokenizer="hash", vocab_size=vocab_size, max_length=max_length)
        self.bag = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=PAD_ID)
        self.output_dim = dim

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        spec = self.input_spec
        return hash_tokenize(texts, spec.vocab_size, spec.max_length, spec.lowercase)

    def _ids(self, x) -> torch.Tensor:
        input_ids, mask = check_text_input(x, "text encoder 'embedding-bag'")
        # Masked positions become padding, which EmbeddingBag leaves out of the mean.
        return input_ids.masked_fill(mask == 0, PAD_ID)  # B×L

    def forward_tokens(self, x) -> torch.Tensor:
        return F.embedding(self._ids(x), self.bag.weight, padding_idx=PAD_ID)  # B×L×D

    def forward(self, x) -> torch.Tensor:
        return self.bag(self._ids(x))  # B×D; an empty text gives zeros


@register("text", "embedding-bag")
def embedding_bag(vocab_size: int = 2**16, dim: int = 128, max_length: int = 64):
    return EmbeddingBagEncoder(vocab_size=vocab_size, dim=dim, max_length=max_length)
