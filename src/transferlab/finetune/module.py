"""The fine-tuning LightningModule: a classifier (backbone + head) trained on a target's few shots.

It only orchestrates: the loss is :func:`transferlab.objectives.losses.supervised_ce`, the schedule
a pure factor function from :mod:`transferlab.finetune.schedules`, metrics come from torchmetrics.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from transferlab.data.loaders import to_float
from transferlab.errors import TrainingError
from transferlab.objectives.losses import supervised_ce


class FinetuneModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        optimizer: str = "adamw",
        schedule: str = "inverse_time",
        schedule_kwargs: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        total_steps: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_name = optimizer
        self.schedule = schedule
        self.schedule_kwargs = dict(schedule_kwargs or {})
        self.label_smoothing = label_smoothing
        self.total_steps = total_steps
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(to_float(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = supervised_ce(logits, y, self.label_smoothing)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"train/loss became {loss.item()} at step {self.global_step}; lower finetune.lr "
                f"(now {self.lr}) or check the data"
            )
        self.train_acc(logits.detach(), y)
        self.log(
            "train/loss",
            loss.detach(),
            on_step=True,
            on_epoch=True,
            batch_size=len(y),
            prog_bar=True,
        )
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(y))
        self.log(
            "train/lr",
            self.optimizers().param_groups[0]["lr"],
            on_step=True,
            on_epoch=False,
            batch_size=len(y),
        )
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log(
            "val/loss", supervised_ce(logits, y), on_epoch=True, batch_size=len(y), prog_bar=True
        )
        self.log("val/acc", self.val_acc, on_epoch=True, batch_size=len(y), prog_bar=True)

    def configure_optimizers(self) -> Any:
        from transferlab.finetune.schedules import build_optimizer, build_scheduler

        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = build_optimizer(
            params, self.optimizer_name, lr=self.lr, weight_decay=self.weight_decay
        )
        sched = build_scheduler(
            opt, self.schedule, total_steps=self.total_steps, **self.schedule_kwargs
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
