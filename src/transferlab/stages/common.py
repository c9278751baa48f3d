"""Pieces every stage shares: seeding, trainer construction, paths and the per-epoch history."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

# Lightning's per-Trainer banners (accelerator, sales tips) repeat once per fit and bury the
# progress bars; warnings and errors still come through.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("lightning.fabric.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (and dataloader workers) from one number."""
    L.seed_everything(int(seed), workers=True, verbose=False)


def configure_torch(trainer_cfg: Mapping[str, Any]) -> None:
    threads = trainer_cfg.get("num_threads")
    if threads:
        torch.set_num_threads(int(threads))
    # On CPU every op we use is deterministic already; this makes a future nondeterministic op
    # warn loudly instead of silently changing metrics between identical runs.
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_trainer(
    trainer_cfg: Mapping[str, Any],
    *,
    max_epochs: int,
    logger: Any = False,
    callbacks: Sequence[Callback] = (),
    limit_train_batches: int | float | None = None,
    limit_val_batches: int | float | None = None,
) -> L.Trainer:
    progress = (
        bool(trainer_cfg.get("enable_progress_bar", True))
        and os.environ.get("TRANSFERLAB_NO_PROGRESS") != "1"
    )
    cbs = list(callbacks)
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        cbs.append(RichProgressBar(leave=False))
    return L.Trainer(
        accelerator=trainer_cfg.get("accelerator", "cpu"),
        devices=trainer_cfg.get("devices", 1),
        precision=trainer_cfg.get("precision", "32-true"),
        deterministic=bool(trainer_cfg.get("deterministic", True)),
        max_epochs=int(max_epochs),
        logger=logger,
        callbacks=cbs,
        enable_progress_bar=progress,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=int(trainer_cfg.get("log_every_n_steps", 10)),
        limit_train_batches=limit_train_batches,
        limit_val_batches=limit_val_batches,
        num_sanity_val_steps=0,
        default_root_dir=trainer_cfg.get("root_dir", ".lightning"),
    )


class History(Callback):
    """Keeps the epoch-level metrics of a fit in memory, for learning curves and reports."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)}
        for k, v in trainer.callback_metrics.items():
            if not k.endswith("_step"):
                row[k.removesuffix("_epoch")] = float(v)
        self.epochs.append(row)


def route_dirs(cfg: Mapping[str, Any], route: str) -> dict[str, Path]:
    paths = cfg.get("paths", {})
    data = Path(paths.get("data_dir", "data")) / route
    models = Path(paths.get("models_dir", "models")) / route
    reports = Path(paths.get("reports_dir", "reports")) / route
    return {
        "data": data,
        "manifest": data / "manifest.json",
        "pretrain": models / "pretrain",
        "finetune": models / "finetune",
        "reports": reports,
    }
