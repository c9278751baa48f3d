"""Learning-rate schedules, optimisers and discriminative (layer-wise) learning rates.

Every schedule is a *multiplicative factor* ``f(t)`` of the optimiser step ``t`` (0-based): the
learning rate of a parameter group is ``η_t = η_0 · f(t)``, which is exactly what
:class:`torch.optim.lr_scheduler.LambdaLR` computes when it is stepped once per optimiser step
(Lightning: ``"interval": "step"``). After ``t`` calls of ``scheduler.step()`` the group's ``lr``
is ``η_0 · f(t)``.

``build_scheduler`` wraps the factor with :func:`functools.partial` rather than a lambda: a
partial of a module-level function pickles, so the scheduler survives ``torch.save`` / Lightning
checkpointing and multiprocessing launchers.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from transferlab.errors import ConfigError

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "FinetuneConfigError",
    "build_optimizer",
    "build_scheduler",
    "constant",
    "cosine_with_warmup",
    "exponential",
    "inverse_time",
    "layerwise_lr_groups",
    "step_decay",
]


class FinetuneConfigError(ConfigError, ValueError):
    """A fine-tuning setting is not allowed.

    It is a :class:`~transferlab.errors.ConfigError` (so the CLI reports it as a user error with
    exit status 2) and a :class:`ValueError` (so plain library callers can catch the usual type).
    """


# --------------------------------------------------------------------------------------------
# Factor functions f(t)
# --------------------------------------------------------------------------------------------


def constant(t: int) -> float:
    """``f(t) = 1``."""
    return 1.0


def inverse_time(t: int, decay: float) -> float:
    """Inverse-time decay ``f(t) = 1 / (1 + λ t)``, so ``η_t = η_0 / (1 + λ t)``.

    ``λ = decay ≥ 0``; ``λ = 0`` is the constant schedule. The step sizes satisfy the
    Robbins–Monro conditions (Σ η_t = ∞, Σ η_t² < ∞), which is why this is the classic SGD decay.
    """
    if decay < 0:
        raise FinetuneConfigError(f"inverse_time decay must be >= 0, got {decay}")
    return 1.0 / (1.0 + decay * t)


def step_decay(t: int, step_size: int, gamma: float) -> float:
    """Piecewise-constant decay ``f(t) = γ^⌊t / step_size⌋``."""
    if step_size < 1:
        raise FinetuneConfigError(f"step_decay step_size must be >= 1, got {step_size}")
    if gamma <= 0:
        raise FinetuneConfigError(f"step_decay gamma must be > 0, got {gamma}")
    return float(gamma ** (t // step_size))


def exponential(t: int, gamma: float) -> float:
    """Exponential decay ``f(t) = γ^t``."""
    if gamma <= 0:
        raise FinetuneConfigError(f"exponential gamma must be > 0, got {gamma}")
    return float(gamma**t)


def cosine_with_warmup(
    t: int, warmup_steps: int, total_steps: int, min_factor: float = 0.0
) -> float:
    """Linear warm-up then cosine decay to ``min_factor``.

    With ``W = warmup_steps`` and ``T = total_steps``::

        f(t) = t / W                                              for t < W
        f(t) = m + (1 − m) · ½ (1 + cos(π · (t − W) / (T − W)))   for W ≤ t ≤ T
        f(t) = m                                                  for t > T

    so ``f(0) = 0`` (when ``W > 0``), ``f(W) = 1`` and ``f(T) = m``. Holding ``m`` after ``T``
    (instead of letting the cosine rise again) keeps an over-long run from re-heating.
    """
    if warmup_steps < 0:
        raise FinetuneConfigError(
            f"cosine_with_warmup warmup_steps must be >= 0, got {warmup_steps}"
        )
    if total_steps <= warmup_steps:
        raise FinetuneConfigError(
            f"cosine_with_warmup total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})"
        )
    if not 0.0 <= min_factor <= 1.0:
        raise FinetuneConfigError(
            f"cosine_with_warmup min_factor must be in [0, 1], got {min_factor}"
        )
    if t < warmup_steps:
        return t / warmup_steps
    progress = min(1.0, (t - warmup_steps) / (total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant,
    "inverse_time": inverse_time,
    "step_decay": step_decay,
    "exponential": exponential,
    "cosine_with_warmup": cosine_with_warmup,
}


def build_scheduler(optimizer: Optimizer, name: str, total_steps: int, **kwargs: Any) -> LambdaLR:
    """A :class:`LambdaLR` applying ``SCHEDULES[name]`` to every parameter group.

    Step it once per optimiser step. ``total_steps`` is passed to schedules that take it (only
    ``cosine_with_warmup``); the remaining keyword arguments are the schedule's own parameters,
    checked here so a typo fails at build time rather than at the first ``step()``.
    """
    if name not in SCHEDULES:
        raise FinetuneConfigError(
            f"unknown lr schedule {name!r}; allowed: {', '.join(sorted(SCHEDULES))}"
        )
    fn = SCHEDULES[name]
    params = inspect.signature(fn).parameters
    if "total_steps" in params:
        kwargs = {"total_steps": total_steps, **kwargs}
    try:
        inspect.signature(fn).bind(0, **kwargs)
    except TypeError as exc:
        allowed = [p for p in params if p != "t"]
        raise FinetuneConfigError(
            f"lr schedule {name!r} got arguments {sorted(kwargs)}; it takes {allowed} ({exc})"
        ) from None
    factor = partial(fn, **kwargs)
    factor(0)  # surfaces invalid values (negative decay, ...) now, not mid-training
    return LambdaLR(optimizer, lr_lambda=factor)


# --------------------------------------------------------------------------------------------
# Optimisers
# --------------------------------------------------------------------------------------------

OPTIMIZERS = ("adam", "adamw", "sgd")

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def build_optimizer(
    param_groups_or_params: ParamsT,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: Sequence[float] = (0.9, 0.999),
    nesterov: bool = False,
) -> Optimizer:
    """Build ``adam``, ``adamw`` or ``sgd`` (heavy-ball momentum, optionally Nesterov).

    ``lr`` and ``weight_decay`` are defaults; a parameter group carrying its own ``lr`` or
    ``weight_decay`` (as :func:`layerwise_lr_groups` produces) keeps it.

    Note the two meanings of ``weight_decay``: for ``sgd`` and ``adam`` PyTorch adds ``λ w`` to the
    gradient (coupled L2, identical to adding ``λ · ½‖w‖²`` to the loss); for ``adamw`` it is
    *decoupled*, ``w ← w − η λ w`` applied outside Adam's ``1/√v̂`` rescaling (Loshchilov & Hutter
    2019). See :mod:`transferlab.finetune.regularizers`.
    """
    key = name.lower()
    if key == "adam":
        return torch.optim.Adam(
            param_groups_or_params, lr=lr, betas=tuple(betas), weight_decay=weight_decay
        )
    if key == "adamw":
        return torch.optim.AdamW(
            param_groups_or_params, lr=lr, betas=tuple(betas), weight_decay=weight_decay
        )
    if key == "sgd":
        if nesterov and momentum <= 0:
            raise FinetuneConfigError(f"sgd nesterov=True needs momentum > 0, got {momentum}")
        return torch.optim.SGD(
            param_groups_or_params,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
        )
    raise FinetuneConfigError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def layerwise_lr_groups(
    model: nn.Module, base_lr: float, decay: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Discriminative learning rates (ULMFiT / layer-wise lr decay) for a ``Classifier``.

    With ``n = model.backbone.num_blocks`` blocks and ``d = decay``::

        lr(head)     = base_lr
        lr(block i)  = base_lr · d^(n − i)        i = 0 … n−1 (0 is the input block)
        lr(other)    = base_lr · d^(n + 1)        backbone parameters outside ``blocks``

    so the top block gets ``base_lr · d`` and the input block ``base_lr · d^n``: general low-level
    features move least. "Other" backbone parameters (a stem, if a backbone has one) are treated
    as sitting below block 0. Parameters with ``requires_grad=False`` are skipped, every
    parameter appears at most once (shared parameters stay in the first group that claims them:
    head, then blocks top-down), and empty groups are dropped. The head group is first, so
    ``param_groups[0]`` carries ``base_lr``. Each group has a ``"name"`` (``head``, ``block3``…).
    """
    if not 0.0 < decay <= 1.0:
        raise FinetuneConfigError(f"layer-wise lr decay must be in (0, 1], got {decay}")
    backbone = model.backbone
    blocks = list(backbone.blocks)
    n = len(blocks)
    seen: set[int] = set()

    def claim(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        out = []
        for p in params:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    groups: list[dict[str, Any]] = []

    def add(name: str, params: list[nn.Parameter], lr: float) -> None:
        if params:
            groups.append({"name": name, "params": params, "lr": lr, "weight_decay": weight_decay})

    add("head", claim(model.head.parameters()), base_lr)
    for i in reversed(range(n)):
        add(f"block{i}", claim(blocks[i].parameters()), base_lr * decay ** (n - i))
    add("backbone_other", claim(backbone.parameters()), base_lr * decay ** (n + 1))
    # Anything else on the model (e.g. an extra projection) trains at the head's rate.
    add("other", claim(model.parameters()), base_lr)
    return groups
