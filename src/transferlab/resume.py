"""Crash-safe training: a killed pretrain or finetune run resumes to the same final weights.

Two pieces make resume exact rather than approximate:

1. Every random stream inside an epoch is a function of ``(seed, epoch)`` only: the data order
   (:class:`~transferlab.data.loaders.EpochRandomSampler`, re-seeded by Lightning's
   ``set_epoch``), and torch's global RNG plus every ``torch.Generator`` a module owns (masks,
   augmentations, noise), re-seeded by :class:`EpochSeed` when a training epoch starts.
2. A checkpoint (weights, optimiser, scheduler, loop progress, callback state) is written at the
   end of every epoch under ``.lightning/resume/<run key>/last.ckpt``, where the key hashes the
   run's identity and resolved config, so a changed config never resumes from a stale run.

A run killed mid-epoch therefore restarts that epoch from the previous epoch's checkpoint and
replays it bit for bit; the directory is removed once the run has finished. Checkpoints are
loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

RESUME_ROOT = Path(".lightning") / "resume"


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % (2**31 - 1)


class EpochSeed(Callback):
    """Re-seed torch/NumPy/random and the module's own generators from ``(seed, epoch)``."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = epoch_seed(self.seed, trainer.current_epoch)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        gens = sorted((name, g) for name, g in _generators(pl_module))
        for i, (_, g) in enumerate(gens):
            g.manual_seed(s + 7919 * (i + 1))


def _generators(module: torch.nn.Module) -> list[tuple[str, torch.Generator]]:
    found = []
    for mod_name, mod in module.named_modules():
        for attr, value in vars(mod).items():
            if isinstance(value, torch.Generator) and not attr.startswith("_val"):
                found.append((f"{mod_name}.{attr}", value))
    return found


def run_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Resume:
    """Checkpoint callback + the checkpoint to resume from (if a previous attempt left one)."""

    def __init__(
        self,
        name: str,
        parts: Mapping[str, Any],
        root: Path = RESUME_ROOT,
        enabled: bool = True,
        every_n_epochs: int = 1,
    ) -> None:
        self.enabled = enabled
        self.every_n_epochs = int(every_n_epochs)
        self.dir = root / f"{name}-{run_key(parts)}"
        last = self.dir / "last.ckpt"
        self.ckpt_path: str | None = str(last) if enabled and last.exists() else None
        if self.ckpt_path is not None:
            try:  # a kill during the checkpoint write leaves a torn file: start over instead
                torch.load(last, map_location="cpu", weights_only=True)
            except Exception:
                self.done()
                self.ckpt_path = None

    def callbacks(self) -> list[Callback]:
        if not self.enabled:
            return []
        return [
            # monitor=None with save_top_k=1 keeps exactly the latest epoch's checkpoint
            # (Lightning 2.6 writes save_last only alongside a top-k save).
            ModelCheckpoint(
                dirpath=self.dir,
                filename="last",
                monitor=None,
                save_top_k=1,
                every_n_epochs=self.every_n_epochs,
                save_on_train_epoch_end=True,
                enable_version_counter=False,
            )
        ]

    def done(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
