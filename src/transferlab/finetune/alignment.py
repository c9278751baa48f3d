"""Differentiable distribution-matching losses between source and target features.

Fine-tuning can fight distribution shift by pulling the target's features toward the source's
(``finetune.alignment``). These are torch versions of two estimators in
:mod:`transferlab.shift.estimators` (which are NumPy, for reporting): the training losses need
gradients, the reports need float64 and bootstrap.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float | None = None) -> Tensor:
    """Biased (V-statistic) squared MMD with an RBF kernel, differentiable in ``x`` and ``y``::

        MMD² = mean k(x, x') + mean k(y, y') − 2 mean k(x, y),   k(a, b) = exp(−‖a − b‖² / (2h²))

    ``h`` is the median pairwise distance of the pooled batch (median heuristic), computed without
    gradient so the kernel width does not chase the loss. The biased form is always ≥ 0, which
    suits a loss; it is ``O(1/n)`` above the population value.
    """
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        with torch.no_grad():
            off = d2[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
            h2 = off.median().clamp_min(1e-12)
    else:
        h2 = torch.tensor(float(bandwidth) ** 2, device=z.device)
    k = torch.exp(-d2 / (2 * h2))
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def gaussian_kl(x: Tensor, y: Tensor, eps: float = 1e-3) -> Tensor:
    """KL between Gaussians fitted to two feature batches, ``D_KL(N(μ_x, Σ_x) || N(μ_y, Σ_y))``::

        ½ [ tr(Σ_y⁻¹ Σ_x) + (μ_y − μ_x)ᵀ Σ_y⁻¹ (μ_y − μ_x) − d + ln det Σ_y − ln det Σ_x ]

    Covariances get ``eps·I`` so small batches (n < d) stay invertible; with that ridge the value
    is biased low for small n, which is harmless for a loss that only needs the right gradient.
    """
    d = x.shape[1]
    eye = torch.eye(d, device=x.device, dtype=x.dtype)
    mx, my = x.mean(0), y.mean(0)
    cx = torch.cov(x.T).reshape(d, d) + eps * eye
    cy = torch.cov(y.T).reshape(d, d) + eps * eye
    ly = torch.linalg.cholesky(cy)
    diff = (my - mx).unsqueeze(1)
    trace = torch.cholesky_solve(cx, ly).diagonal().sum()
    maha = (diff * torch.cholesky_solve(diff, ly)).sum()
    logdet_y = 2 * ly.diagonal().log().sum()
    logdet_x = torch.linalg.slogdet(cx).logabsdet
    return 0.5 * (trace + maha - d + logdet_y - logdet_x)


ALIGNMENTS = {"mmd": mmd_rbf, "gaussian_kl": gaussian_kl}
