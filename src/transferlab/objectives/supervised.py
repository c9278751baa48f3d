"""Supervised pre-training: cross-entropy on the source labels (the standard transfer baseline).

A linear head on the backbone's pooled features classifies the source images (the 10 Fashion-MNIST
classes) with :func:`~transferlab.objectives.losses.supervised_ce`,
``L = −(1/B) Σ_b Σ_c q_{b,c} log softmax(W f(x_b) + b)_c`` with ``q_b = (1 − ε)·onehot(y_b) + ε/C``.
The head is discarded; the backbone transfers. ``acc`` is logged next to the loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transferlab.data.loaders import to_float
from transferlab.errors import ConfigError
from transferlab.objectives.base import PretrainModule
from transferlab.objectives.losses import supervised_ce


class Supervised(PretrainModule):
    uses_labels = True
    norm_recalibration_batches = 10  # BatchNorm statistics of the final weights

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        max_batches: int | None = None,
    ) -> None:
        super().__init__(backbone, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
        self.max_batches = max_batches
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(
                f"objectives.supervised.label_smoothing={label_smoothing!r} must be in [0, 1)"
            )
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.head = nn.Linear(backbone.feature_dim, self.num_classes)

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        x, y = to_float(batch[0]), batch[1]
        if int(y.max()) >= self.num_classes:
            raise ConfigError(
                f"objectives.supervised.num_classes={self.num_classes} but the source has label "
                f"{int(y.max())}; set it to the number of source classes"
            )
        logits = self.head(self.backbone(x))
        acc = (logits.argmax(dim=1) == y).float().mean().detach()
        return {"loss": supervised_ce(logits, y, self.label_smoothing), "acc": acc}
