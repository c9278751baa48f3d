"""WiSE-FT: weight-space ensembling of the pre-trained and the fine-tuned model.

Wortsman et al. (2022), "Robust fine-tuning of zero-shot models": evaluate
``θ_α = (1 − α) θ₀ + α θ_ft`` for ``α ∈ [0, 1]``; intermediate α often keeps most of the
fine-tuned in-distribution accuracy while recovering the pre-trained model's robustness to shift.
Interpolation is only meaningful between two models of the same architecture where ``θ_ft`` was
fine-tuned *from* ``θ₀`` (they then sit in one linearly connected basin).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from transferlab.errors import CheckpointError

__all__ = ["StateDictMismatchError", "interpolate_state_dicts"]


class StateDictMismatchError(CheckpointError, ValueError):
    """Two state dicts cannot be interpolated: different keys, shapes or dtypes."""


def _keys_problem(sd0: Mapping[str, Any], sd1: Mapping[str, Any]) -> str | None:
    only0 = [k for k in sd0 if k not in sd1]
    only1 = [k for k in sd1 if k not in sd0]
    if not (only0 or only1):
        return None
    parts = []
    if only0:
        parts.append(f"only in sd0: {only0[:3]}{' …' if len(only0) > 3 else ''}")
    if only1:
        parts.append(f"only in sd1: {only1[:3]}{' …' if len(only1) > 3 else ''}")
    return "; ".join(parts)


def interpolate_state_dicts(
    sd0: Mapping[str, Any], sd1: Mapping[str, Any], alpha: float
) -> dict[str, Any]:
    """``(1 − α) w₀ + α w_ft`` entry by entry, for ``α ∈ [0, 1]``.

    * Floating (and complex) tensors are interpolated; ``α = 0`` / ``α = 1`` return exact copies of
      ``sd0`` / ``sd1`` (the formula would not be bit-exact at ``α = 1`` for ``lerp``-style
      arithmetic, and would turn an ``inf`` in the other dict into ``nan``).
    * Integer/bool tensors (e.g. BatchNorm's ``num_batches_tracked``) and non-tensor entries
      cannot be averaged meaningfully: they are taken from ``sd1`` when ``α > 0`` and from ``sd0``
      when ``α = 0``. ``num_batches_tracked`` only matters for ``momentum=None`` BatchNorm.
    * The running BatchNorm statistics are interpolated like weights. They are not the statistics
      of the interpolated network; re-estimating them on target data is a possible refinement.

    Keys, shapes and dtypes must match; otherwise :class:`StateDictMismatchError` (a
    ``ValueError``) with one line naming the first problem. Results are new tensors on ``sd1``'s
    devices; inputs are never modified. Key order follows ``sd1``.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise StateDictMismatchError(f"WiSE-FT alpha must be in [0, 1], got {alpha}")
    problem = _keys_problem(sd0, sd1)
    if problem is not None:
        raise StateDictMismatchError(f"state dicts have different keys: {problem}")
    out: dict[str, Any] = {}
    for key, w1 in sd1.items():
        w0 = sd0[key]
        if isinstance(w0, torch.Tensor) != isinstance(w1, torch.Tensor):
            raise StateDictMismatchError(
                f"state dict entry {key!r} is a tensor in only one of them"
            )
        if not isinstance(w1, torch.Tensor):
            out[key] = w1 if alpha > 0 else w0
            continue
        if w0.shape != w1.shape:
            raise StateDictMismatchError(
                f"state dict entry {key!r} has shape {tuple(w0.shape)} vs {tuple(w1.shape)}"
            )
        if w0.dtype != w1.dtype:
            raise StateDictMismatchError(
                f"state dict entry {key!r} has dtype {w0.dtype} vs {w1.dtype}"
            )
        if not (w1.is_floating_point() or w1.is_complex()):
            out[key] = (w1 if alpha > 0 else w0).detach().clone().to(w1.device)
        elif alpha == 0.0:
            out[key] = w0.detach().clone().to(w1.device)
        elif alpha == 1.0:
            out[key] = w1.detach().clone()
        else:
            out[key] = (1.0 - alpha) * w0.detach().to(w1.device) + alpha * w1.detach()
    return out
