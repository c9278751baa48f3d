"""What every pre-training LightningModule shares: the backbone, the optimiser and the logging."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import nn

from transferlab.data.loaders import to_float
from transferlab.errors import TrainingError


class PretrainModule(L.LightningModule):
    """Base class: subclasses implement ``step(batch) -> dict of losses`` with a ``loss`` entry."""

    #: Whether ``step`` reads labels (``batch[1]``): such an objective cannot continue on a
    #: target's unlabelled inputs (domain-adaptive pre-training).
    uses_labels: bool = False

    def __init__(
        self,
        backbone: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps

    #: Keeps the private generators of objectives combined by ``MultiObjective`` apart.
    seed_offset: int = 0

    def on_fit_start(self) -> None:
        # The seed as the fit starts (seed_all's), before any per-epoch re-seeding of torch.
        self._fit_seed = int(torch.initial_seed())

    def rng_seed(self, stream: int = 0) -> int:
        """Seed for a private ``torch.Generator`` (masks, augmentations, noise).

        Derived from ``torch.initial_seed()`` as the fit starts (set by ``seed_all``), so the same
        seed gives the same run whatever else consumed the global RNG, and a per-epoch stream (val
        noise, the sample grid's noise) stays fixed across epochs; ``stream`` separates e.g. train
        (0) and val (1).
        """
        base = getattr(self, "_fit_seed", None)
        base = int(torch.initial_seed()) if base is None else base
        return (base + 1009 * self.seed_offset + stream) % (2**63)

    #: Before each validation and after fit, re-estimate the backbone's BatchNorm running statistics
    #: on the last this-many training batches with the current weights (0: keep the running
    #: averages gathered while the weights moved, which after a short, fast run describe none of
    #: the weights the backbone ends with).
    norm_recalibration_batches: int = 0

    #: An objective's own cap on training batches in total (``max_batches`` in its config, for
    #: objectives whose step costs several backbone passes): the fit validates and stops after this
    #: many batches even mid-epoch; None = ``max_epochs`` alone decides.
    max_batches: int | None = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.max_batches is not None and self.trainer.fit_loop.total_batch_idx + 1 >= int(
            self.max_batches
        ):
            self.trainer.should_stop = True
        self.remember_inputs(batch)

    def remember_inputs(self, batch: Any) -> None:
        """Keep the last ``norm_recalibration_batches`` real input batches (for ``recalibrate``)."""
        if self.norm_recalibration_batches > 0:
            recent = [*getattr(self, "_recent_inputs", []), first(batch)]
            self._recent_inputs = recent[-self.norm_recalibration_batches :]

    def recalibrate(self) -> None:
        """Re-estimate BatchNorm statistics on the kept batches (eval mode reads only these, so
        training is unchanged; validation and the saved backbone see the final weights' own)."""
        if getattr(self, "_recent_inputs", None):
            recalibrate_norm_stats(self.backbone, self._recent_inputs)

    def on_validation_epoch_start(self) -> None:
        self.recalibrate()

    def on_fit_end(self) -> None:
        self.recalibrate()

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _log_losses(
        self, losses: dict[str, torch.Tensor], prefix: str, on_step: bool, bs: int
    ) -> None:
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise TrainingError(
                f"{prefix}/loss became {loss.item()} at step {self.global_step}; lower the learning "
                "rate (pretrain.*.lr) or check the data"
            )
        for k, v in losses.items():
            self.log(
                f"{prefix}/{k}",
                v.detach(),
                on_step=on_step,
                on_epoch=not on_step,
                batch_size=bs,
                prog_bar=k == "loss",
            )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        losses = self.step(batch)
        self._log_losses(losses, "train", on_step=True, bs=len(first(batch)))
        return losses["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._log_losses(self.step(batch), "val", on_step=False, bs=len(first(batch)))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.warmup_steps <= 0:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, partial(_linear_warmup, warmup=self.warmup_steps)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _linear_warmup(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup)


@torch.no_grad()
def recalibrate_norm_stats(backbone: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Reset BatchNorm running statistics and re-estimate them as the plain average over
    ``batches`` of real inputs (momentum ``None``), the other layers in eval mode."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = backbone.training
    saved = [m.momentum for m in norms]
    backbone.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    device = next(backbone.parameters()).device
    for x in batches:
        backbone(to_float(x).to(device))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    backbone.train(was_training)


def first(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, tuple | list) else batch
