"""A small bidirectional Transformer encoder for masked-LM pre-training (BERT-like, nanoGPT-style).

``ids (B, T) → embeddings → N pre-LN blocks → final LayerNorm``; the MLM head is a dense + GELU +
LayerNorm transform followed by a projection tied to the token embedding.

Backbone interface (shared with the image backbones, so finetune treats both alike):

- ``blocks``: ``nn.ModuleList`` from input to output. ``blocks[0]`` is the embedding layer
  (token + learned position), ``blocks[1:]`` are the Transformer blocks, so freezing depth ``k``
  (``blocks[:k]``) freezes the embeddings first, then the lowest layers.
- ``num_blocks`` (``n_layers + 1``), ``feature_dim`` (``d_model``).
- ``forward(ids, attention_mask=None) → (B, D)``: mean of the final hidden states over
  non-padding tokens.
- ``forward_tokens(ids, attention_mask) → (B, T, D)``, ``mlm_logits(ids, attention_mask) →
  (B, T, V)``.

``attention_mask`` is ``(B, T)`` with True/1 for real tokens; when omitted it is ``ids != pad_id``.
Padding tokens are excluded as attention keys, so the hidden states of real tokens do not
depend on how much padding follows them (padding must be on the right: positions are absolute).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Embeddings(nn.Module):
    """Token + learned absolute position embeddings, then dropout."""

    def __init__(self, vocab_size: int, max_len: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.max_len = max_len

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        if self.max_len < T:
            raise ValueError(f"sequence length {T} exceeds the model's max_len {self.max_len}")
        pos = torch.arange(T, device=ids.device)
        return self.drop(self.tok(ids) + self.pos(pos))


class SelfAttention(nn.Module):
    """Multi-head self-attention on ``scaled_dot_product_attention`` (flash/SDPA kernels)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool = False) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.attn_dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        # (B, T, D) → (B, heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # key_mask (B, T) bool, True = may be attended to; broadcast over heads and queries.
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        if self.causal and attn_mask is not None:
            # SDPA takes either is_causal or a mask, not both: fold causality into the mask.
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            attn_mask = attn_mask & causal
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=self.causal and attn_mask is None,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, D)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, d_model: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, mlp_ratio * d_model)
        self.proj = nn.Linear(mlp_ratio * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN Transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(
        self, d_model: int, n_heads: int, mlp_ratio: int, dropout: float, causal: bool = False
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout, causal=causal)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), key_mask)
        return x + self.mlp(self.ln2(x))


def init_weights(model: nn.Module, n_layers: int) -> None:
    """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layers)."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith("proj.weight") else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``h (B, T, D)`` over positions where ``mask (B, T)`` is true."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class TextEncoder(nn.Module):
    """Bidirectional Transformer encoder with a tied MLM head. Defaults: ~1.3M parameters."""

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
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.pad_id = pad_id
        self.blocks = nn.ModuleList(
            [
                Embeddings(vocab_size, max_len, d_model, dropout),
                *(Block(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers)),
            ]
        )
        self.ln_f = nn.LayerNorm(d_model)
        # MLM transform (as in BERT) before the tied output projection.
        self.mlm_dense = nn.Linear(d_model, d_model)
        self.mlm_ln = nn.LayerNorm(d_model)
        self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))
        self.feature_dim = d_model
        init_weights(self, n_layers)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.blocks[0].tok

    def _mask(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return (ids != self.pad_id) if attention_mask is None else attention_mask.bool()

    def forward_tokens(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden states ``(B, T, D)`` (after the last LayerNorm)."""
        mask = self._mask(ids, attention_mask)
        # A row that is all padding would softmax over nothing (NaN); let it attend everywhere.
        key_mask = mask | ~mask.any(dim=1, keepdim=True)
        x = self.blocks[0](ids)
        for block in self.blocks[1:]:
            x = block(x, key_mask)
        return self.ln_f(x)

    def forward(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled features ``(B, D)``: mean over non-padding tokens."""
        mask = self._mask(ids, attention_mask)
        return masked_mean(self.forward_tokens(ids, mask), mask)

    def mlm_logits(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Vocabulary logits ``(B, T, V)`` at every position (the loss picks masked ones)."""
        h = self.forward_tokens(ids, attention_mask)
        h = self.mlm_ln(F.gelu(self.mlm_dense(h)))
        return F.linear(h, self.token_embedding.weight, self.mlm_bias)
