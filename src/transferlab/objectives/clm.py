"""Causal (next-token) language modelling (GPT) for the text decoder.

Position ``t`` of a block predicts token ``t + 1`` (:func:`~transferlab.objectives.losses.clm_loss`)::

    L = −(1/|S|) Σ_{(b,t)∈S} log p(x_{b,t+1} | x_{b,≤t})

over every position whose target is not padding (source blocks have none, so |S| = B·(T−1)).
``val/ppl = exp(L)`` over a whole split is the usual per-token perplexity.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.objectives.lm import LanguageModel
from transferlab.objectives.losses import clm_loss


class CausalLM(LanguageModel):
    def __init__(
        self,
        backbone: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(backbone, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
        if not hasattr(backbone, "lm_logits"):
            raise ValueError(
                f"objective clm needs a causal backbone with an LM head (TextDecoder), got "
                f"{type(backbone).__name__}"
            )

    def token_ce(
        self, ids: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, int]:
        n = int((ids[:, 1:] != self.backbone.pad_id).sum())
        if n == 0:
            return self.backbone.token_embedding.weight.sum() * 0.0, 0
        logits = self.backbone.lm_logits(ids)
        return clm_loss(logits, ids, pad_id=self.backbone.pad_id) * n, n
