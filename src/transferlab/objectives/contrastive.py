"""Contrastive pre-training (SimCLR): two augmented views of an image should embed close together.

Each batch is augmented twice (:class:`~transferlab.objectives.augment.BatchAugment`: random resized
crop + small translation, horizontal flip, brightness/contrast jitter, Gaussian noise), both views go
through the backbone and a projection head g (Linear → BatchNorm → ReLU → Linear), and the loss is

- ``nt_xent`` (default): SimCLR's NT-Xent over the 2N views,
  :func:`~transferlab.objectives.losses.nt_xent`;
- ``info_nce``: InfoNCE with the other view as key, symmetrised,
  ``½[InfoNCE(z₁, z₂) + InfoNCE(z₂, z₁)]``, :func:`~transferlab.objectives.losses.info_nce`;

with temperature τ. Transfer uses the representation *before* the head (``module.backbone``): the
head discards what the augmentations vary, which the target task may need. ``top1`` is logged as
the fraction of views whose nearest other-view embedding is their own partner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.data.loaders import to_float
from transferlab.errors import ConfigError
from transferlab.objectives.augment import BatchAugment
from transferlab.objectives.base import PretrainModule
from transferlab.objectives.losses import info_nce, nt_xent

LOSSES = ("nt_xent", "info_nce")


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class Contrastive(PretrainModule):
    norm_recalibration_batches = 10  # BatchNorm statistics of the final weights

    def __init__(
        self,
        backbone: nn.Module,
        temperature: float = 0.5,
        loss: str = "nt_xent",
        proj_hidden_dim: int | None = None,
        proj_dim: int = 64,
        augment: Mapping[str, Any] | None = None,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        max_batches: int | None = None,
    ) -> None:
        super().__init__(backbone, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
        self.max_batches = max_batches
        if loss not in LOSSES:
            raise ConfigError(f"objectives.contrastive.loss={loss!r}; allowed: {', '.join(LOSSES)}")
        if not temperature > 0:
            raise ConfigError(f"objectives.contrastive.temperature={temperature!r} must be > 0")
        self.temperature = float(temperature)
        self.loss_name = loss
        dim = backbone.feature_dim
        self.head = projection_head(dim, int(proj_hidden_dim or dim), int(proj_dim))
        augment = dict(augment or {})
        allowed = [f.name for f in fields(BatchAugment)]
        unknown = sorted(set(augment) - set(allowed))
        if unknown:
            raise ConfigError(
                f"objectives.contrastive.augment.{unknown[0]} is unknown; allowed: {', '.join(allowed)}"
            )
        try:
            self.augment = BatchAugment(**augment)
        except ValueError as exc:
            raise ConfigError(f"objectives.contrastive.{str(exc).splitlines()[0]}") from None
        self._gen = torch.Generator()
        self._val_gen = torch.Generator()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._gen.manual_seed(self.rng_seed(0))

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        # The same val views every epoch, so val/loss curves compare like with like.
        self._val_gen.manual_seed(self.rng_seed(1))

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gen = self._gen if self.training else self._val_gen
        return self.augment(x, gen), self.augment(x, gen)

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        v1, v2 = self.views(to_float(batch[0]))
        # One forward over both views: BatchNorm sees the 2N images of the NT-Xent problem together.
        z1, z2 = self.head(self.backbone(torch.cat([v1, v2]))).chunk(2)
        if self.loss_name == "nt_xent":
            loss = nt_xent(z1, z2, self.temperature)
        else:
            loss = (info_nce(z1, z2, self.temperature) + info_nce(z2, z1, self.temperature)) / 2
        with torch.no_grad():
            sim = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T
            top1 = (sim.argmax(dim=1) == torch.arange(len(z1), device=z1.device)).float().mean()
        return {"loss": loss, "top1": top1}
