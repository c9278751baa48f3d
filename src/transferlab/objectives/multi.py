"""Multi-objective pre-training: ``L = Σ_i λ_i L_i`` over objectives that share one backbone.

``components`` holds each objective's own config (the defaults interpolate ``objectives.<name>``)
and ``weights`` picks the ones to combine: ``{mae: 1.0, contrastive: 1.0}`` builds a masked
reconstruction part and a contrastive part on the *same* backbone object, computes each part's
``step`` on every batch, and minimises :func:`~transferlab.objectives.losses.weighted_sum` of their
``loss`` entries with one optimiser over the backbone and every part's heads (the parts' own
``lr``/budget keys are ignored; this module's apply). A weight of 0 keeps a part's loss logged but
out of the gradient. Every part's metrics are logged as ``<split>/<part>/<metric>``.

A GAN part contributes its discriminator loss to the sum (its trunk is the shared backbone); its
generator keeps an optimiser of its own and takes one step per batch after the shared step, so
with a GAN part this module switches to manual optimisation.

Weights are checked when the module is built: unknown names, negative or non-finite weights and
all-zero weights raise one :class:`~transferlab.errors.ConfigError` line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from transferlab.errors import ConfigError
from transferlab.objectives.base import PretrainModule, _linear_warmup
from transferlab.objectives.losses import weighted_sum
from transferlab.study import plain

# Keys of an objective's config that are the pretrain stage's budget, not constructor arguments.
BUDGET_KEYS = ("route", "max_epochs", "batch_size")


def check_weights(weights: Mapping[str, Any], allowed: list[str]) -> dict[str, float]:
    """``weights`` as floats, or a ConfigError naming the first bad entry."""
    if not isinstance(weights, Mapping) or not weights:
        raise ConfigError(
            f"objectives.multi.weights must map objective names to weights; allowed names: "
            f"{', '.join(allowed)}"
        )
    for key, value in weights.items():
        if str(key) not in allowed:
            raise ConfigError(
                f"objectives.multi.weights.{key}: unknown objective; allowed: {', '.join(allowed)}"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"objectives.multi.weights.{key}={value!r} must be a finite number")
    out = {str(k): float(v) for k, v in weights.items()}
    try:  # weighted_sum owns the rules (λ_i ≥ 0, not all zero); a dry run applies them here.
        weighted_sum(dict.fromkeys(out, torch.zeros(())), out)
    except ValueError as exc:
        raise ConfigError(f"objectives.multi.weights: {exc}") from None
    return out


class MultiObjective(PretrainModule):
    norm_recalibration_batches = 10  # BatchNorm statistics of the final weights

    def __init__(
        self,
        backbone: nn.Module,
        weights: Mapping[str, float],
        components: Mapping[str, Mapping[str, Any]],
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        max_batches: int | None = None,
    ) -> None:
        super().__init__(backbone, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
        self.max_batches = max_batches
        # With `_recursive_: false` Hydra hands the parts' configs over unconverted.
        components = plain(components)
        weights = plain(weights)
        allowed = sorted(str(k) for k in components if str(k) != "multi")
        self.weights = check_weights(weights, allowed)
        self.parts = nn.ModuleDict()
        for i, name in enumerate(sorted(self.weights)):
            cfg = {k: v for k, v in dict(components[name]).items() if k not in BUDGET_KEYS}
            part = instantiate(cfg, backbone=backbone, _convert_="all")
            part.seed_offset = i + 1  # distinct noise per part (mae keeps the global seed's)
            self.parts[name] = part
        self.adversarial_parts = [
            name for name, part in self.parts.items() if getattr(part, "adversarial", False)
        ]
        self.automatic_optimization = not self.adversarial_parts

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        per_part = {name: part.step(batch) for name, part in self.parts.items()}
        out = {"loss": weighted_sum({n: p["loss"] for n, p in per_part.items()}, self.weights)}
        for name, losses in per_part.items():
            out.update({f"{name}/{k}": v for k, v in losses.items()})
        return out

    # ---------------------------------------------------------------- hooks the parts rely on

    def on_fit_start(self) -> None:
        super().on_fit_start()
        for part in self.parts.values():
            part.on_fit_start()

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        for part in self.parts.values():
            part.on_validation_epoch_start()

    def on_train_epoch_end(self) -> None:
        for name in self.adversarial_parts:
            self.parts[name].log_samples(self.logger, self.current_epoch, f"samples/{name}")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        for name, part in self.parts.items():
            if hasattr(part, "val_metrics"):
                for key, (value, n) in part.val_metrics(batch).items():
                    self.log(f"val/{name}/{key}", value, on_step=False, on_epoch=True, batch_size=n)

    # ---------------------------------------------------------------- optimisation

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        opt, *gen_opts = self.optimizers()
        losses = self.step(batch)
        opt.zero_grad()
        self.manual_backward(losses["loss"])
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        for name, gen_opt in zip(self.adversarial_parts, gen_opts, strict=True):
            losses[f"{name}/g_loss"] = self.parts[name].generator_update(
                gen_opt, len(batch[0]), self.manual_backward
            )
        self._log_losses(losses, "train", on_step=True, bs=len(batch[0]))
        return losses["loss"].detach()

    def configure_optimizers(self) -> Any:
        if self.automatic_optimization:
            return super().configure_optimizers()
        gen_params = {
            id(p) for n in self.adversarial_parts for p in self.parts[n].generator.parameters()
        }
        shared = [p for p in self.parameters() if id(p) not in gen_params]
        opt = torch.optim.AdamW(shared, lr=self.lr, weight_decay=self.weight_decay)
        gen_opts = [self.parts[n].generator_optimizer() for n in self.adversarial_parts]
        if self.warmup_steps <= 0:
            return [opt, *gen_opts]
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, partial(_linear_warmup, warmup=self.warmup_steps)
        )
        return [opt, *gen_opts], [sched]
