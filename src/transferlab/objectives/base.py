"""What every pre-training LightningModule shares: the backbone, the optimiser and the logging."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from transferlab.errors import TrainingError


class PretrainModule(L.LightningModule):
    """Base class: subclasses implement ``step(batch) -> dict of losses`` with a ``loss`` entry."""

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
        from functools import partial

        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, partial(_linear_warmup, warmup=self.warmup_steps)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _linear_warmup(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup)


def first(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, tuple | list) else batch
