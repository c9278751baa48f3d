"""The Lightning callbacks every fit shares: the epoch history, device tuning, a throttled bar."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar


class History(Callback):
    """Keeps the epoch-level metrics of a fit in memory, for learning curves and reports.

    Its state travels in checkpoints, so a resumed fit reports the whole curve.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": [dict(r) for r in self.epochs]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = [dict(r) for r in state_dict.get("epochs", [])]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)}
        for k, v in trainer.callback_metrics.items():
            if not k.endswith("_step"):
                row[k.removesuffix("_epoch")] = float(v)
        self.epochs.append(row)


class DeviceTuning(Callback):
    """``trainer.compile`` / ``trainer.pin_memory`` (``trainer=gpu``).

    Compiles each top-level submodule in place (``nn.Module.compile``), so state-dict keys and the
    saved backbone stay what ``load_backbone`` expects; on CUDA, pins the fit's host batches so
    that the host-to-device copy overlaps compute.
    """

    def __init__(self, compile: bool = False, pin_memory: bool = False) -> None:
        self.compile, self.pin_memory = compile, pin_memory

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.compile:
            for child in pl_module.children():
                child.compile()
        if self.pin_memory and trainer.strategy.root_device.type == "cuda":
            # Set before Lightning builds its loaders: it copies this attribute when it re-creates
            # a loader (DDP samplers) and the first epoch's iterator reads it.
            for loop in (trainer.fit_loop, trainer.fit_loop.epoch_loop.val_loop):
                loader = getattr(getattr(loop, "_data_source", None), "instance", None)
                if isinstance(loader, torch.utils.data.DataLoader):
                    loader.pin_memory = True


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's rich bar, redrawn at most every ``min_interval`` seconds within an epoch.

    The stock bar updates its task and re-reads every progress-bar metric after each batch:
    ~2 ms a step on this project's 2-core machine, 5-10 % of a fine-tuning step (this one:
    ~0.3 ms). The bar's position is absolute, so skipped updates lose nothing; the last batch
    of an epoch always updates.
    """

    def __init__(self, *args: Any, min_interval: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_interval = min_interval
        self._last_update = -math.inf

    def _due(self, current: int, total: float) -> bool:
        now = time.monotonic()
        if current >= total or now - self._last_update >= self.min_interval:
            self._last_update = now
            return True
        return False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if self.train_progress_bar_id is None or self._due(i + 1, self.total_train_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, i)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        i: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self._due(i + 1, self.total_val_batches_current_dataloader):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, i, dataloader_idx)
