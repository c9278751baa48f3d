"""The fine-tuning LightningModule: a classifier (backbone + head) trained on a target's few shots.

It only orchestrates pure pieces: the loss (:func:`~transferlab.objectives.losses.supervised_ce`),
regularisers (:mod:`.regularizers`: explicit L2, L2-SP), task weighting (:mod:`.multitask`:
fixed ``Σ λ_i L_i``, uncertainty, GradNorm), auxiliary tasks (:mod:`.tasks`), feature alignment to
the source (:mod:`.alignment`), optimisers and schedules (:mod:`.schedules`). Freezing lives in the
:class:`~transferlab.finetune.freezing.FreezeSchedule` callback.

The objective of one step, with every option on::

    L = Σ_i λ_i L_i  +  R(w)  +  γ · D(f_source, f_target)

where ``L_0`` is the target's cross-entropy, ``L_i>0`` the auxiliary tasks, ``R`` the regulariser
and ``D`` the alignment loss between backbone features of a source batch and the target batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from transferlab.data.loaders import to_float
from transferlab.errors import ConfigError, TrainingError
from transferlab.finetune.alignment import ALIGNMENTS
from transferlab.finetune.multitask import GradNorm, UncertaintyWeighting
from transferlab.finetune.regularizers import l2_penalty, l2_sp_penalty, snapshot_params
from transferlab.finetune.schedules import build_optimizer, build_scheduler, layerwise_lr_groups
from transferlab.finetune.tasks import AUX_TASKS
from transferlab.objectives.losses import supervised_ce

WEIGHTINGS = ("fixed", "uncertainty", "gradnorm")
REGULARIZERS = ("none", "l2", "l2_sp")


class FinetuneModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        optimizer: str = "adamw",
        schedule: str = "constant",
        schedule_kwargs: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        total_steps: int = 1,
        layerwise_decay: float | None = None,
        regularizer: Mapping[str, Any] | None = None,
        multitask: Mapping[str, Any] | None = None,
        alignment: Mapping[str, Any] | None = None,
        source_x: torch.Tensor | None = None,
        seed: int = 0,
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
        self.layerwise_decay = layerwise_decay
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

        reg = dict(regularizer or {})
        self.reg_name = str(reg.get("name", "none"))
        if self.reg_name not in REGULARIZERS:
            raise ConfigError(
                f"finetune.regularizer.name={self.reg_name!r} is not allowed; choose one of: {', '.join(REGULARIZERS)}"
            )
        self.reg = reg
        # w₀ of L2-SP: the weights the backbone starts from (pre-trained, or the random init for
        # the scratch control), kept as buffers-free plain tensors so checkpoints stay small.
        self._reference = snapshot_params(model.backbone) if self.reg_name == "l2_sp" else {}

        mt = dict(multitask or {})
        self.tasks = [str(t) for t in mt.get("tasks", [])]
        unknown = [t for t in self.tasks if t not in AUX_TASKS]
        if unknown:
            raise ConfigError(
                f"finetune.multitask.tasks: unknown task '{unknown[0]}'; allowed: {', '.join(AUX_TASKS)}"
            )
        self.aux_heads = nn.ModuleDict(
            {t: nn.Linear(model.backbone.feature_dim, AUX_TASKS[t][1]) for t in self.tasks}
        )
        self.weighting = str(mt.get("weighting", "fixed"))
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(
                f"finetune.multitask.weighting={self.weighting!r} is not allowed; choose one of: {', '.join(WEIGHTINGS)}"
            )
        names = ["main", *self.tasks]
        weights = dict(mt.get("weights") or {})
        if self.tasks and self.weighting == "fixed":
            self.fixed_weights = [float(weights.get(n, 1.0)) for n in names]
            if any(w < 0 for w in self.fixed_weights) or sum(self.fixed_weights) == 0:
                raise ConfigError(
                    f"finetune.multitask.weights={weights} must be >= 0 and not all zero"
                )
        else:
            self.fixed_weights = [1.0] * len(names)
        self.task_names = names
        self.uncertainty = (
            UncertaintyWeighting(len(names))
            if self.tasks and self.weighting == "uncertainty"
            else None
        )
        self.gradnorm = (
            GradNorm(len(names), alpha=float(mt.get("gradnorm_alpha", 1.5)))
            if self.tasks and self.weighting == "gradnorm"
            else None
        )

        al = dict(alignment or {})
        self.align_kind = str(al.get("kind", "none"))
        self.align_weight = float(al.get("weight", 0.0))
        self.align_batch = int(al.get("batch_size", 64))
        if self.align_kind != "none" and source_x is None:
            raise ConfigError("finetune.alignment needs source images; none were given")
        self.source_x = source_x if self.align_kind != "none" else None
        self._gen = torch.Generator().manual_seed(int(seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(to_float(x))

    # ----------------------------------------------------------------------------------- losses
    def _task_losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(x)
        losses = [supervised_ce(logits, y, self.label_smoothing)]
        for t in self.tasks:
            xa, ya = AUX_TASKS[t][0](x, self._gen)
            losses.append(supervised_ce(self.aux_heads[t](self.model.backbone(to_float(xa))), ya))
        return torch.stack(losses), logits

    def _regulariser(self) -> torch.Tensor:
        if self.reg_name == "l2":
            return float(self.reg.get("coef", 0.0)) * l2_penalty(
                p for p in self.model.parameters() if p.requires_grad
            )
        if self.reg_name == "l2_sp":
            params = {n: p for n, p in self.model.backbone.named_parameters() if p.requires_grad}
            ref = {n: self._reference[n] for n in params}
            return l2_sp_penalty(
                params,
                ref,
                self.model.head.parameters(),
                float(self.reg.get("alpha", 0.0)),
                float(self.reg.get("beta", 0.0)),
            )
        return torch.zeros((), device=self.device)

    def _alignment(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(0, len(self.source_x), (self.align_batch,), generator=self._gen)
        f_src = self.model.backbone(to_float(self.source_x[idx].to(x.device)))
        f_tgt = self.model.backbone(to_float(x))
        return ALIGNMENTS[self.align_kind](f_src, f_tgt)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        losses, logits = self._task_losses(x, y)
        if self.uncertainty is not None:
            total = self.uncertainty(losses)
            weights = self.uncertainty.weights()
        elif self.gradnorm is not None:
            # Σ w_i L_i with w detached, plus the GradNorm loss that only moves w: one backward
            # serves both (Lightning zeroes gradients between training_step and backward).
            shared = next(self.model.backbone.blocks[-1].parameters())
            total = self.gradnorm.weighted_loss(losses) + self.gradnorm.gradnorm_loss(
                losses, shared
            )
            weights = self.gradnorm.weights.detach()
        else:
            weights = torch.tensor(self.fixed_weights, device=losses.device)
            total = (weights * losses).sum()
        reg = self._regulariser()
        total = total + reg
        if self.align_kind != "none" and self.align_weight > 0:
            align = self._alignment(x)
            total = total + self.align_weight * align
            self.log("train/align", align.detach(), on_step=True, on_epoch=True, batch_size=len(y))
        if not torch.isfinite(total):
            raise TrainingError(
                f"train/loss became {total.item()} at step {self.global_step}; lower the learning "
                f"rate (now {self.lr}: study.lr_grid, finetune.lr in a sweep trial) or check the data"
            )
        self.train_acc(logits.detach(), y)
        bs = len(y)
        self.log(
            "train/loss",
            losses[0].detach(),
            on_step=True,
            on_epoch=True,
            batch_size=bs,
            prog_bar=True,
        )
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=bs)
        self.log(
            "train/lr",
            self.optimizers().param_groups[0]["lr"],
            on_step=True,
            on_epoch=False,
            batch_size=bs,
        )
        if self.reg_name != "none":
            self.log("train/reg", reg.detach(), on_step=True, on_epoch=True, batch_size=bs)
        if self.tasks:
            self.log("train/total_loss", total.detach(), on_step=True, on_epoch=True, batch_size=bs)
            for name, loss, w in zip(self.task_names, losses, weights, strict=True):
                self.log(
                    f"train/loss_{name}", loss.detach(), on_step=True, on_epoch=True, batch_size=bs
                )
                self.log(
                    f"train/weight_{name}", float(w), on_step=True, on_epoch=False, batch_size=bs
                )
        return total

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.gradnorm is not None:
            self.gradnorm.renormalise()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log(
            "val/loss", supervised_ce(logits, y), on_epoch=True, batch_size=len(y), prog_bar=True
        )
        self.log("val/acc", self.val_acc, on_epoch=True, batch_size=len(y), prog_bar=True)
        if self.tasks:
            gen = torch.Generator().manual_seed(batch_idx)  # the same auxiliary labels every epoch
            for t in self.tasks:
                xa, ya = AUX_TASKS[t][0](x, gen)
                acc = (
                    (self.aux_heads[t](self.model.backbone(to_float(xa))).argmax(-1) == ya)
                    .float()
                    .mean()
                )
                self.log(f"val/acc_{t}", acc, on_epoch=True, batch_size=len(y))

    # ------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        if self.layerwise_decay:
            groups: list[dict[str, Any]] = layerwise_lr_groups(
                self.model, self.lr, float(self.layerwise_decay), self.weight_decay
            )
        else:
            groups = [
                {"params": [p for p in self.model.parameters() if p.requires_grad], "name": "model"}
            ]
        extra = [p for p in self.aux_heads.parameters()]
        if extra:
            groups.append({"params": extra, "name": "aux_heads"})
        weighting = self.uncertainty or self.gradnorm
        if weighting is not None:
            # Task weights are not model weights: no decay pulls them toward zero.
            groups.append(
                {
                    "params": list(weighting.parameters()),
                    "weight_decay": 0.0,
                    "name": "task_weights",
                }
            )
        opt = build_optimizer(
            groups, self.optimizer_name, lr=self.lr, weight_decay=self.weight_decay
        )
        sched = build_scheduler(
            opt, self.schedule, total_steps=self.total_steps, **self.schedule_kwargs
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
