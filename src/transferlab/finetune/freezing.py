"""Freezing the backbone: fixed depth, LP-FT and gradual unfreezing.

"Freezing depth k" means ``backbone.blocks[:k]`` (the k blocks nearest the input) are frozen and
``blocks[k:]`` plus the head train; ``k = num_blocks`` is a linear probe, ``k = 0`` full
fine-tuning.

Frozen BatchNorm. ``requires_grad=False`` stops the affine parameters but not the running
statistics: a BatchNorm layer in train mode keeps normalising with batch statistics and keeps
updating ``running_mean/var``. With ``freeze_norm_stats=True`` the frozen blocks' BatchNorm layers
are put in ``eval()`` mode, so they normalise with (and keep) the pre-trained statistics, i.e. a
frozen block computes exactly the pre-trained function.

Notes on Lightning 2.6's ``BaseFinetuning`` (checked against the installed source), which is why
the callback below does its own freezing and param-group bookkeeping:

* ``BaseFinetuning.freeze(modules, train_bn=True)`` — the default — leaves BatchNorm *trainable*.
  With ``train_bn=False`` it sets ``track_running_stats=False`` and never calls ``eval()``: in
  train mode such a layer normalises with *batch* statistics (the running buffers are simply not
  updated), so training-time features differ from eval-time ones.
* The fit loop does not call ``model.train()`` at each epoch start; modes survive epochs, and
  validation restores each submodule's captured mode. A LightningModule that overrides
  ``on_validation_model_train`` (the base version calls ``trainer.model.train()``), or any code
  calling ``.train()``, flips frozen BatchNorm back to train mode; the callback therefore
  re-applies ``eval()`` at every train epoch start and every train batch start.
* ``BaseFinetuning.filter_on_optimizer`` detects "already in the optimizer" with ``torch.equal``
  (equal *values*), so a fresh BatchNorm weight (all ones) can be mistaken for another one that is
  already present; ``add_param_group`` here compares identities.
* ``torch.optim.lr_scheduler`` (2.13) zips param groups with scheduler lists using
  ``strict=True``: after ``optimizer.add_param_group`` an attached scheduler raises on its next
  ``step()`` unless its per-group lists (``base_lrs``, ``lr_lambdas``…) are extended;
  ``sync_schedulers`` does that.
* ``freeze_before_training`` runs in ``setup`` — before ``configure_optimizers`` and before a
  checkpoint restores callback state — so the LightningModule must build its optimiser from
  ``requires_grad`` parameters only (the newly unfrozen ones are added later as a new group).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from transferlab.finetune.schedules import FinetuneConfigError

__all__ = [
    "FreezeSchedule",
    "add_param_group",
    "check_freeze_depth",
    "freeze_blocks",
    "norm_layers",
    "set_frozen_norm_eval",
    "sync_schedulers",
    "unfreeze_blocks",
]


def check_freeze_depth(k: int, num_blocks: int) -> None:
    """Raise the one-line config error unless ``0 ≤ k ≤ num_blocks``."""
    if not 0 <= k <= num_blocks:
        raise FinetuneConfigError(
            f"finetune.freeze_depth={k} is beyond the model's depth {num_blocks}; "
            f"allowed 0..{num_blocks}"
        )


def norm_layers(modules: Iterable[nn.Module]) -> list[_BatchNorm]:
    """All BatchNorm layers inside ``modules``."""
    return [m for mod in modules for m in mod.modules() if isinstance(m, _BatchNorm)]


def set_frozen_norm_eval(backbone: nn.Module, k: int) -> None:
    """Put the BatchNorm layers of ``blocks[:k]`` in eval mode (idempotent, cheap)."""
    for bn in norm_layers(backbone.blocks[:k]):
        bn.eval()


def freeze_blocks(backbone: nn.Module, k: int, freeze_norm_stats: bool = True) -> None:
    """Freeze ``backbone.blocks[:k]``: ``requires_grad=False``; BatchNorm to eval if asked.

    ``blocks[k:]`` are left as they are (see :func:`unfreeze_blocks` to make them trainable).
    Raises :class:`FinetuneConfigError` (a ``ValueError``) unless ``0 ≤ k ≤ num_blocks``.
    """
    check_freeze_depth(k, backbone.num_blocks)
    for block in backbone.blocks[:k]:
        for p in block.parameters():
            p.requires_grad_(False)
    if freeze_norm_stats:
        set_frozen_norm_eval(backbone, k)


def unfreeze_blocks(backbone: nn.Module, k: int) -> list[nn.Parameter]:
    """Make ``backbone.blocks[k:]`` trainable; return the parameters that were frozen before.

    Their BatchNorm layers follow the backbone's own mode (train during fitting), undoing a
    previous ``freeze_blocks(..., freeze_norm_stats=True)``.
    """
    check_freeze_depth(k, backbone.num_blocks)
    newly: list[nn.Parameter] = []
    for block in backbone.blocks[k:]:
        for p in block.parameters():
            if not p.requires_grad:
                p.requires_grad_(True)
                newly.append(p)
    for bn in norm_layers(backbone.blocks[k:]):
        bn.train(backbone.training)
    return newly


def sync_schedulers(optimizer: Optimizer, schedulers: Iterable[Any]) -> None:
    """Extend the per-group lists of ``schedulers`` attached to ``optimizer`` to its group count.

    A new group's base rate is its ``initial_lr``; ``LambdaLR``/``MultiplicativeLR`` reuse group 0's
    factor function, so the new group follows the same schedule scaled by its own base rate.
    """
    n = len(optimizer.param_groups)
    for sched in schedulers:
        if getattr(sched, "optimizer", None) is not optimizer:
            continue
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        if isinstance(sched, LRScheduler):
            while len(sched.base_lrs) < n:
                sched.base_lrs.append(optimizer.param_groups[len(sched.base_lrs)]["initial_lr"])
            last = getattr(sched, "_last_lr", None)
            if isinstance(last, list):
                while len(last) < n:
                    last.append(optimizer.param_groups[len(last)]["lr"])
        lambdas = getattr(sched, "lr_lambdas", None)
        if isinstance(lambdas, list) and lambdas:
            lambdas.extend([lambdas[0]] * (n - len(lambdas)))
        min_lrs = getattr(sched, "min_lrs", None)  # ReduceLROnPlateau
        if isinstance(min_lrs, list) and min_lrs:
            min_lrs.extend([min_lrs[0]] * (n - len(min_lrs)))


def add_param_group(
    optimizer: Optimizer,
    params: Iterable[nn.Parameter],
    lr_factor: float = 1.0,
    schedulers: Sequence[Any] = (),
    name: str | None = None,
) -> dict[str, Any] | None:
    """Add the trainable ``params`` not yet in ``optimizer`` as one new group; return it.

    The group's rate is ``lr_factor · param_groups[0]["lr"]`` (current rate) and its
    ``initial_lr`` is ``lr_factor`` times group 0's, so a ``LambdaLR`` continues it on the same
    schedule. Membership is by identity. Returns ``None`` when nothing new was added.
    """
    present = {id(p) for g in optimizer.param_groups for p in g["params"]}
    new: list[nn.Parameter] = []
    for p in params:
        if p.requires_grad and id(p) not in present:
            present.add(id(p))
            new.append(p)
    if not new:
        return None
    ref = optimizer.param_groups[0]
    group: dict[str, Any] = {"params": new, "lr": lr_factor * ref["lr"]}
    group["initial_lr"] = lr_factor * ref.get("initial_lr", ref["lr"])
    if name is not None:
        group["name"] = name
    optimizer.add_param_group(group)
    sync_schedulers(optimizer, schedulers)
    return optimizer.param_groups[-1]


class FreezeSchedule(BaseFinetuning):
    """Lightning callback: fixed freezing depth, LP-FT, or gradual unfreezing.

    The LightningModule must either have ``backbone`` and ``head`` attributes itself or hold a
    ``Classifier`` at ``model_attr``, and must build its optimiser from ``requires_grad``
    parameters (frozen parameters added up front are harmless — gradient-less parameters are
    skipped by the optimisers — but then no ``lr_factor`` group can be created for them).

    Modes, with ``n = num_blocks`` and ``k = freeze_depth``; ``d(e)`` is the frozen depth in epoch e:

    * ``fixed``:   ``d(e) = k``.
    * ``lp_ft``:   ``d(e) = n`` for ``e < lp_epochs`` (linear probe: whole backbone frozen), then
      ``k`` (Kumar et al. 2022). The switch adds the unfrozen parameters as one new param group.
    * ``gradual``: ``d(e) = max(k, n − ⌊e / unfreeze_every⌋)``: head only, then one more block from
      the top every ``unfreeze_every`` epochs, down to depth ``k`` (ULMFiT, Howard & Ruder 2018).
      Each unfrozen block becomes its own param group.

    New groups train at ``lr_factor × param_groups[0]["lr"]`` and LR schedulers known to the
    trainer are extended to cover them (:func:`sync_schedulers`).

    Observable state: ``frozen_depth`` (current d), ``phase`` (``"linear_probe"`` while the whole
    backbone is frozen, ``"finetune"`` once d has reached k, ``"gradual"`` in between),
    ``switch_epoch`` (epoch at which ``phase`` became ``"finetune"`` by unfreezing; ``None`` if it
    never switched) and ``history`` (``[(epoch, depth), …]`` of every change, starting with
    ``(0, d(0))``). These are saved in checkpoints and re-applied on resume.
    """

    MODES = ("fixed", "lp_ft", "gradual")

    def __init__(
        self,
        mode: str = "fixed",
        freeze_depth: int = 0,
        lp_epochs: int = 1,
        unfreeze_every: int = 1,
        lr_factor: float = 1.0,
        freeze_norm_stats: bool = True,
        model_attr: str = "model",
    ) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise FinetuneConfigError(
                f"finetune.freeze_mode={mode!r} is not known; allowed: {', '.join(self.MODES)}"
            )
        if lp_epochs < 0:
            raise FinetuneConfigError(f"finetune.lp_epochs={lp_epochs} must be >= 0")
        if unfreeze_every < 1:
            raise FinetuneConfigError(f"finetune.unfreeze_every={unfreeze_every} must be >= 1")
        if freeze_depth < 0:
            raise FinetuneConfigError(
                f"finetune.freeze_depth={freeze_depth} is negative; allowed 0..num_blocks"
            )
        self.mode = mode
        self.freeze_depth = int(freeze_depth)
        self.lp_epochs = int(lp_epochs)
        self.unfreeze_every = int(unfreeze_every)
        self.lr_factor = float(lr_factor)
        self.freeze_norm_stats = freeze_norm_stats
        self.model_attr = model_attr
        self.num_blocks: int | None = None
        self.frozen_depth: int | None = None
        self.switch_epoch: int | None = None
        self.history: list[tuple[int, int]] = []
        self._trainer: pl.Trainer | None = None
        self._restored_depth: int | None = None

    # -- schedule ------------------------------------------------------------------------------

    def depth_at(self, epoch: int, num_blocks: int) -> int:
        """Frozen depth ``d(epoch)`` for this mode (see class docstring)."""
        k = self.freeze_depth
        if self.mode == "lp_ft":
            return num_blocks if epoch < self.lp_epochs else k
        if self.mode == "gradual":
            return max(k, num_blocks - epoch // self.unfreeze_every)
        return k

    @property
    def phase(self) -> str | None:
        if self.frozen_depth is None or self.num_blocks is None:
            return None
        if self.frozen_depth == self.num_blocks:
            return "linear_probe"
        if self.frozen_depth == self.freeze_depth:
            return "finetune"
        return "gradual"

    # -- model access --------------------------------------------------------------------------

    def _classifier(self, pl_module: nn.Module) -> nn.Module:
        if hasattr(pl_module, "backbone") and hasattr(pl_module, "head"):
            return pl_module
        model = getattr(pl_module, self.model_attr, None)
        if not (hasattr(model, "backbone") and hasattr(model.backbone, "blocks")):
            raise AttributeError(
                f"FreezeSchedule needs the LightningModule to have `backbone`/`head` or a Classifier "
                f"at `{self.model_attr}`; {type(pl_module).__name__} has neither"
            )
        return model

    def _backbone(self, pl_module: nn.Module) -> nn.Module:
        return self._classifier(pl_module).backbone

    def _apply_depth(self, backbone: nn.Module, depth: int) -> None:
        unfreeze_blocks(backbone, depth)
        freeze_blocks(backbone, depth, self.freeze_norm_stats)
        self.frozen_depth = depth

    # -- BaseFinetuning hooks ------------------------------------------------------------------

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        backbone = self._backbone(pl_module)
        self.num_blocks = backbone.num_blocks
        check_freeze_depth(self.freeze_depth, self.num_blocks)
        depth = self.depth_at(0, self.num_blocks)
        self._apply_depth(backbone, depth)
        self.history = [(0, depth)]
        self.switch_epoch = None

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        backbone = self._backbone(pl_module)
        assert self.frozen_depth is not None
        target = self.depth_at(epoch, backbone.num_blocks)
        if target < self.frozen_depth:
            blocks = backbone.blocks
            schedulers = self._schedulers()
            start = self.frozen_depth
            unfreeze_blocks(backbone, target)
            if self.mode == "gradual":
                # one group per block, so each can later be given its own rate
                for i in reversed(range(target, start)):
                    add_param_group(
                        optimizer, blocks[i].parameters(), self.lr_factor, schedulers, f"block{i}"
                    )
            else:
                params = [p for b in blocks[target:start] for p in b.parameters()]
                add_param_group(optimizer, params, self.lr_factor, schedulers, "backbone")
            self.frozen_depth = target
            self.history.append((epoch, target))
            if self.phase == "finetune":
                self.switch_epoch = epoch
        if self.freeze_norm_stats:
            set_frozen_norm_eval(backbone, self.frozen_depth)

    def _schedulers(self) -> list[Any]:
        trainer = self._trainer
        if trainer is None:
            return []
        return [cfg.scheduler for cfg in trainer.lr_scheduler_configs]

    # -- Lightning hooks -----------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        restarting = self._restarting
        super().on_fit_start(trainer, pl_module)  # restores saved param groups on resume
        self._trainer = trainer
        if restarting and self._restored_depth is not None:
            self._apply_depth(self._backbone(pl_module), self._restored_depth)
            for optimizer in trainer.optimizers:
                sync_schedulers(optimizer, self._schedulers())
            self._restored_depth = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        super().on_train_epoch_start(trainer, pl_module)
        if self.freeze_norm_stats and self.frozen_depth:
            set_frozen_norm_eval(self._backbone(pl_module), self.frozen_depth)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # cheap guard against a `.train()` issued mid-epoch (e.g. after validation)
        if self.freeze_norm_stats and self.frozen_depth:
            set_frozen_norm_eval(self._backbone(pl_module), self.frozen_depth)

    # -- checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            frozen_depth=self.frozen_depth,
            switch_epoch=self.switch_epoch,
            history=list(self.history),
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self._restored_depth = state.pop("frozen_depth", None)
        self.switch_epoch = state.pop("switch_epoch", None)
        self.history = [tuple(h) for h in state.pop("history", [])]  # type: ignore[misc]
        super().load_state_dict(state)
