"""Training plumbing every fit shares: seeding, torch threads and the Lightning ``Trainer``."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from transferlab.callbacks import DeviceTuning, ThrottledRichProgressBar

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
    max_steps: int = -1,
    check_val_every_n_epoch: int = 1,
    logger: Any = False,
    callbacks: Sequence[Callback] = (),
    limit_train_batches: int | float | None = None,
    limit_val_batches: int | float | None = None,
    distributed: bool = False,
) -> L.Trainer:
    """A Trainer from ``trainer_cfg``; only ``distributed=True`` callers (pre-training) get the
    config's multi-process ``strategy``/``devices``/``num_nodes``: few-shot fits stay one process."""
    progress = (
        bool(trainer_cfg.get("enable_progress_bar", True))
        and os.environ.get("TRANSFERLAB_NO_PROGRESS") != "1"
    )
    cbs = list(callbacks)
    if progress:
        cbs.append(ThrottledRichProgressBar(leave=False))
    if trainer_cfg.get("compile") or trainer_cfg.get("pin_memory"):
        cbs.append(
            DeviceTuning(bool(trainer_cfg.get("compile")), bool(trainer_cfg.get("pin_memory")))
        )
    return L.Trainer(
        accelerator=trainer_cfg.get("accelerator", "cpu"),
        devices=trainer_cfg.get("devices", 1) if distributed else 1,
        num_nodes=int(trainer_cfg.get("num_nodes", 1)) if distributed else 1,
        strategy=_strategy(trainer_cfg) if distributed else "auto",
        sync_batchnorm=distributed and bool(trainer_cfg.get("sync_batchnorm", False)),
        precision=trainer_cfg.get("precision", "32-true"),
        deterministic=bool(trainer_cfg.get("deterministic", True)),
        max_epochs=int(max_epochs),
        max_steps=int(max_steps),
        check_val_every_n_epoch=int(check_val_every_n_epoch),
        logger=logger,
        callbacks=cbs,
        enable_progress_bar=progress,
        enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in cbs),
        enable_model_summary=False,
        log_every_n_steps=int(trainer_cfg.get("log_every_n_steps", 10)),
        limit_train_batches=limit_train_batches,
        limit_val_batches=limit_val_batches,
        num_sanity_val_steps=0,
        default_root_dir=trainer_cfg.get("root_dir", ".lightning"),
    )


def _strategy(trainer_cfg: Mapping[str, Any]) -> Any:
    """``trainer.strategy`` (``ddp``: Lightning re-launches the command once per extra rank) with
    ``trainer.process_group_backend`` (gloo on CPU, nccl on GPUs)."""
    name = str(trainer_cfg.get("strategy") or "auto")
    backend = trainer_cfg.get("process_group_backend")
    if name in ("ddp", "ddp_spawn") and backend:
        method = "spawn" if name == "ddp_spawn" else "popen"
        return DDPStrategy(process_group_backend=str(backend), start_method=method)
    return name
