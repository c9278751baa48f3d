"""Explicit weight penalties for fine-tuning: plain L2 and L2-SP.

Explicit L2 versus weight decay
-------------------------------
``l2_penalty`` is added to the loss, ``loss + λ · ½ Σ‖w‖²``, so its gradient ``λ w`` is *coupled*
to the data gradient and goes through whatever the optimiser does to gradients:

* plain SGD: ``w ← w − η (g + λ w)``; this is exactly ``torch.optim.SGD(weight_decay=λ)``, which
  adds ``λ w`` to the gradient itself (with momentum too, since both enter the momentum buffer).
* Adam: the ``λ w`` term is divided by ``√v̂ + ε`` like the rest of the gradient, so weights with
  large gradient history are decayed *less*. ``torch.optim.Adam(weight_decay=λ)`` is this same
  coupled form. ``torch.optim.AdamW(weight_decay=λ)`` is *decoupled* (Loshchilov & Hutter 2019):
  ``w ← w − η λ w − η m̂ / (√v̂ + ε)``, a uniform shrink outside the adaptive rescaling. The two
  therefore differ already after one step, and their λ's are not interchangeable.

L2-SP
-----
Li, Grandvalet & Davoine (2018), "Explicit inductive bias for transfer learning with
convolutional networks": pull the fine-tuned backbone towards the *pre-trained* weights ``w₀``
rather than towards zero, and apply ordinary L2 only to the new head::

    Ω(w) = α/2 ‖w_backbone − w₀‖² + β/2 ‖w_head‖²

``w₀`` must be a detached copy taken before fine-tuning starts (``snapshot_params``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["l2_penalty", "l2_sp_penalty", "snapshot_params"]


def _sum_sq(tensors: Iterable[Tensor]) -> Tensor | None:
    total: Tensor | None = None
    for t in tensors:
        s = t.pow(2).sum()
        total = s if total is None else total + s
    return total


def l2_penalty(params: Iterable[Tensor]) -> Tensor:
    """``½ Σ_w ‖w‖²`` over ``params``; gradient ``w``. Multiply by λ in the loss.

    An empty iterable gives a zero scalar (so a fully frozen model still yields a loss term).
    """
    total = _sum_sq(params)
    return torch.zeros(()) if total is None else 0.5 * total


def _pair_with_reference(
    params: Mapping[str, Tensor] | Sequence[Tensor],
    reference: Mapping[str, Tensor] | Sequence[Tensor],
) -> list[tuple[Tensor, Tensor]]:
    if isinstance(params, Mapping):
        if not isinstance(reference, Mapping):
            raise TypeError(
                "l2_sp_penalty: backbone_params is a mapping, so reference_params must be one"
            )
        missing = [k for k in params if k not in reference]
        if missing:
            raise KeyError(f"l2_sp_penalty: no reference weights for {missing[:5]}")
        pairs = [(params[k], reference[k]) for k in params]
    else:
        params, reference = list(params), list(reference)  # type: ignore[arg-type]
        if len(params) != len(reference):
            raise ValueError(
                f"l2_sp_penalty: {len(params)} backbone params but {len(reference)} reference tensors"
            )
        pairs = list(zip(params, reference, strict=True))
    for w, w0 in pairs:
        if w.shape != w0.shape:
            raise ValueError(
                f"l2_sp_penalty: shape {tuple(w.shape)} vs reference {tuple(w0.shape)}"
            )
    return pairs


def l2_sp_penalty(
    backbone_params: Mapping[str, Tensor] | Sequence[Tensor],
    reference_params: Mapping[str, Tensor] | Sequence[Tensor],
    head_params: Iterable[Tensor],
    alpha: float,
    beta: float,
) -> Tensor:
    """L2-SP: ``α/2 Σ ‖w − w₀‖² + β/2 Σ ‖w_head‖²``.

    Gradients: ``α (w − w₀)`` for backbone weights, ``β w_head`` for head weights.

    ``backbone_params`` and ``reference_params`` are either both name→tensor mappings (matched by
    name, e.g. ``dict(backbone.named_parameters())`` and ``snapshot_params(backbone)``) or both
    sequences (matched by position). The reference is detached here as a guard, so it can never
    receive a gradient even if a caller passes live parameters.
    """
    pairs = _pair_with_reference(backbone_params, reference_params)
    sp = _sum_sq(w - w0.detach().to(w.device) for w, w0 in pairs)
    head = _sum_sq(head_params)
    backbone_term = torch.zeros(()) if sp is None else sp
    head_term = torch.zeros(()) if head is None else head
    return 0.5 * alpha * backbone_term + 0.5 * beta * head_term


def snapshot_params(module: nn.Module) -> dict[str, Tensor]:
    """``{name: w.detach().clone()}`` for every parameter: the ``w₀`` of L2-SP.

    Cloning matters: a bare ``detach()`` shares storage and would follow the in-place optimiser
    updates, making ``w − w₀`` identically zero.
    """
    return {name: p.detach().clone() for name, p in module.named_parameters()}
