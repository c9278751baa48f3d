"""A small causal Transformer decoder for causal-LM pre-training (GPT-like, nanoGPT-style).

``ids (B, T) → embeddings → N pre-LN causal blocks → final LayerNorm → tied LM head``. The
building blocks are those of :mod:`transferlab.models.text_encoder` with ``is_causal=True``.

Backbone interface (as for the encoder and the image backbones):

- ``blocks``: ``nn.ModuleList`` from input to output; ``blocks[0]`` is the embedding layer,
  ``blocks[1:]`` the Transformer blocks; freezing depth ``k`` freezes ``blocks[:k]``.
- ``num_blocks`` (``n_layers + 1``), ``feature_dim`` (``d_model``).
- ``lm_logits(ids) → (B, T, V)``: position ``t`` predicts token ``t + 1``.
- ``forward(ids, attention_mask=None) → (B, D)``: pooled features for a classifier head.
  ``pool="last"`` (default) takes the hidden state of the last non-padding token, the only
  position that has read the whole text under a causal mask (the data's classification items end
  in ``[SEP]``, so this is the state that predicts what follows a finished text); ``pool="mean"``
  averages over non-padding tokens instead.

Padding must be on the right. Under the causal mask no real token attends to a later pad, so no
key-padding mask is needed and real tokens' states are independent of trailing padding.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from transferlab.models.text_encoder import Block, Embeddings, init_weights, masked_mean


class TextDecoder(nn.Module):
    """Causal Transformer decoder with a tied LM head. Defaults: ~1.3M parameters."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int = 128,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.1,
        pad_id: int = 0,
        pool: Literal["last", "mean"] = "last",
    ) -> None:
        super().__init__()
        if pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.pad_id = pad_id
        self.pool = pool
        self.blocks = nn.ModuleList(
            [
                Embeddings(vocab_size, max_len, d_model, dropout),
                *(
                    Block(d_model, n_heads, mlp_ratio, dropout, causal=True)
                    for _ in range(n_layers)
                ),
            ]
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.feature_dim = d_model
        init_weights(self, n_layers)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.blocks[0].tok

    def forward_tokens(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden states ``(B, T, D)``; ``attention_mask`` is accepted for symmetry only."""
        x = self.blocks[0](ids)
        for block in self.blocks[1:]:
            x = block(x)
        return self.ln_f(x)

    def lm_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(B, T, V)`` from the output projection tied to the embedding."""
        return F.linear(self.forward_tokens(ids), self.token_embedding.weight)

    def forward(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled features ``(B, D)`` (see the module docstring for ``pool``)."""
        mask = (ids != self.pad_id) if attention_mask is None else attention_mask.bool()
        h = self.forward_tokens(ids)
        if self.pool == "mean":
            return masked_mean(h, mask)
        # Index of the last real token; an all-padding row falls back to position 0.
        last = mask.long().cumsum(dim=1).argmax(dim=1)
        return h[torch.arange(h.shape[0], device=h.device), last]
