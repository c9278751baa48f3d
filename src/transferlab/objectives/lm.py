"""What the language-modelling objectives (MLM, CLM) share: token-weighted cross-entropy.

A subclass implements ``token_ce(ids, generator) -> (Σ CE, n)``: the summed cross-entropy (nats)
over the ``n`` positions it predicts. The batch loss is ``Σ CE / n``; validation accumulates both
sums over the epoch, so ``val/ppl = exp(Σ CE / Σ n)`` is the perplexity of the whole split
(:func:`~transferlab.objectives.losses.perplexity`), not a mean of per-batch perplexities.
:meth:`LanguageModel.lm_cross_entropy` computes the same on any block tensor (the evaluate stage's
``test/ppl`` on a target's held-out text).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from transferlab.objectives.base import PretrainModule, first
from transferlab.objectives.losses import perplexity


class Perplexity(Metric):
    """``exp(Σ CE / Σ n)`` over every ``update(Σ CE, n)`` of an epoch (token-weighted)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, total: torch.Tensor, n: int) -> None:
        self.total += total.detach().double()
        self.count += int(n)

    def compute(self) -> torch.Tensor:
        return perplexity(self.total / self.count.clamp_min(1)).float()


class LanguageModel(PretrainModule):
    def token_ce(
        self, ids: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Private generators (as in mae.py): validation draws the same corruption every epoch, and
        # training draws do not depend on what else consumed the global RNG.
        self._gen = torch.Generator()
        self._val_gen = torch.Generator()
        self.val_ppl = Perplexity()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._gen.manual_seed(int(torch.initial_seed()) % (2**63))

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        total, n = self.token_ce(first(batch), self._gen if self.training else self._val_gen)
        return {"loss": total / max(n, 1)}

    def on_validation_epoch_start(self) -> None:
        self._val_gen.manual_seed(int(torch.initial_seed()) % (2**63) + 1)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        ids = first(batch)
        total, n = self.token_ce(ids, self._val_gen)
        self._log_losses({"loss": total / max(n, 1)}, "val", on_step=False, bs=len(ids))
        self.val_ppl.update(total, n)
        self.log("val/ppl", self.val_ppl, on_epoch=True, batch_size=len(ids))

    @torch.no_grad()
    def lm_cross_entropy(
        self, blocks: torch.Tensor, batch_size: int = 256, seed: int = 0
    ) -> dict[str, float]:
        """``{"lm_loss": Σ CE / n, "ppl": exp(lm_loss), "tokens": n}`` over ``blocks (N, T)``.

        Random choices (MLM's corruption) come from a generator seeded with ``seed``: the same
        blocks and seed give the same number for every model compared.
        """
        was_training = self.training
        self.eval()
        gen = torch.Generator().manual_seed(int(seed))
        total, n = 0.0, 0
        for i in range(0, len(blocks), batch_size):
            s, k = self.token_ce(blocks[i : i + batch_size], gen)
            total, n = total + float(s), n + k
        self.train(was_training)
        mean = total / n if n else float("nan")
        return {"lm_loss": mean, "ppl": float(perplexity(mean)), "tokens": n}
