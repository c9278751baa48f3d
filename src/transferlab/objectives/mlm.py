"""Masked language modelling (BERT) for the text encoder.

Each non-special token is chosen with probability ``mask_prob`` and corrupted by the 80/10/10 rule
(:func:`~transferlab.objectives.losses.mlm_mask_tokens`: ``[MASK]`` / random token / unchanged);
the encoder reads the corrupted sequence and the loss is the cross-entropy of the original tokens
at the chosen positions only (:func:`~transferlab.objectives.losses.mlm_loss`)::

    L = −(1/|M|) Σ_{i∈M} log p(x_i | x̃)

The vocabulary projection runs on the chosen positions only (≈15 % of the tokens): the same
logits as ``TextEncoder.mlm_logits`` there, for a fraction of the cost.

Perplexity ``exp(L)`` over the chosen positions is reported as ``val/ppl`` (and by the evaluate
stage as ``test/ppl``). It is a masked-token perplexity, not comparable with a causal model's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.objectives.lm import LanguageModel
from transferlab.objectives.losses import IGNORE_INDEX, mlm_loss, mlm_mask_tokens


def mlm_head(encoder: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits from hidden states ``h (…, D)``: ``TextEncoder.mlm_logits`` after its body."""
    h = encoder.mlm_ln(F.gelu(encoder.mlm_dense(h)))
    return F.linear(h, encoder.token_embedding.weight, encoder.mlm_bias)


class MaskedLM(LanguageModel):
    def __init__(
        self,
        backbone: nn.Module,
        mask_prob: float = 0.15,
        mask_token_id: int = 4,
        special_ids: Sequence[int] = (0, 1, 2, 3, 4),
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(backbone, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
        if not hasattr(backbone, "mlm_dense"):
            raise ValueError(
                f"objective mlm needs a backbone with an MLM head (TextEncoder), got "
                f"{type(backbone).__name__}"
            )
        self.mask_prob = float(mask_prob)
        self.mask_token_id = int(mask_token_id)
        self.special_ids = tuple(int(i) for i in special_ids)

    def token_ce(
        self, ids: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, int]:
        inputs, labels = mlm_mask_tokens(
            ids,
            self.mask_token_id,
            self.backbone.vocab_size,
            self.mask_prob,
            self.special_ids,
            generator=generator,
        )
        h = self.backbone.forward_tokens(inputs, ids != self.backbone.pad_id)
        chosen = labels != IGNORE_INDEX
        n = int(chosen.sum())
        if n == 0:  # nothing drawn in this batch (tiny inputs): a zero loss that keeps the graph
            return h.sum() * 0.0, 0
        logits = mlm_head(self.backbone, h[chosen])
        return mlm_loss(logits[None], labels[chosen][None]) * n, n
