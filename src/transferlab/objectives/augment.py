"""Batched image augmentations for 28×28 grey-scale images, as tensor ops with a seeded generator.

Contrastive pre-training (SimCLR) learns what its augmentations leave unchanged, so they are the
objective's real hyper-parameters. For small centred objects on a black background (Fashion-MNIST)
the useful ones are geometric (a random resized crop, a translation of a pixel or two, a horizontal
flip) and photometric (brightness, contrast, sensor-like Gaussian noise); colour jitter and blur do
little at this size. torchvision is not installable here, and per-image Python loops would cost
more than the model step, so every augmentation draws its parameters for the whole batch at once:

- geometry: one affine map per image, applied with a single ``grid_sample`` call. Output pixel
  coordinates (u, v) ∈ [−1, 1]² read input coordinates
  ``(x, y) = (f·s_x·u + c_x + t_x, s_y·v + c_y + t_y)`` where ``s_x = √(a·r)``, ``s_y = √(a/r)``
  are the crop's side fractions for area fraction a ~ U(scale) and aspect ratio
  r ~ logU(ratio), ``c`` is a crop centre that keeps the crop inside the image, ``t`` a translation
  of up to ``translate`` pixels and f = −1 with probability ``hflip`` (mirror). Pixels read from
  outside the image are 0, i.e. background.
- photometry: ``x' = clip(β·((x − μ)·γ + μ) + σ·ε, 0, 1)`` with per-image mean μ, contrast
  γ ~ U(1 ± contrast), brightness β ~ U(1 ± brightness) and ε ~ N(0, 1).

All parameters come from the caller's ``torch.Generator`` (CPU), in a fixed order, so a seed fixes
the views exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BatchAugment", "affine_params", "photometric", "warp"]


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def affine_params(
    n: int,
    size: int,
    scale: Sequence[float] = (0.6, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    translate: float = 2.0,
    hflip: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Affine matrices θ (n, 2, 3) for ``F.affine_grid``: random resized crop + shift + flip.

    θ_b = [[f·s_x, 0, c_x + t_x], [0, s_y, c_y + t_y]] in normalised coordinates (see the module
    docstring); ``translate`` is in pixels of a ``size``-pixel image.
    """
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {tuple(scale)}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"crop ratio must satisfy 0 < lo <= hi, got {tuple(ratio)}")
    area = _uniform(n, lo, hi, generator)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = log_r.exp()
    sx = (area * aspect).sqrt().clamp(max=1.0)
    sy = (area / aspect).sqrt().clamp(max=1.0)
    # The crop [c − s, c + s] stays inside [−1, 1]: c ∈ [−(1 − s), 1 − s].
    cx = (2 * torch.rand(n, generator=generator) - 1) * (1 - sx)
    cy = (2 * torch.rand(n, generator=generator) - 1) * (1 - sy)
    shift = 2.0 * float(translate) / size  # pixels → normalised units (the image spans 2)
    tx = (2 * torch.rand(n, generator=generator) - 1) * shift
    ty = (2 * torch.rand(n, generator=generator) - 1) * shift
    flip = torch.where(torch.rand(n, generator=generator) < hflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip * sx
    theta[:, 0, 2] = cx + tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = cy + ty
    return theta


def warp(x: Tensor, theta: Tensor) -> Tensor:
    """Apply per-image affine maps θ (B, 2, 3) to images x (B, C, H, W); outside reads are 0."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def photometric(
    x: Tensor,
    brightness: float = 0.3,
    contrast: float = 0.3,
    noise_std: float = 0.05,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``clip(β·((x − μ)·γ + μ) + σ·ε, 0, 1)`` per image, with the factors drawn for the batch."""
    n = len(x)
    gamma = _uniform(n, 1 - contrast, 1 + contrast, generator).to(x).view(n, 1, 1, 1)
    beta = _uniform(n, 1 - brightness, 1 + brightness, generator).to(x).view(n, 1, 1, 1)
    mu = x.mean(dim=(1, 2, 3), keepdim=True)
    out = beta * ((x - mu) * gamma + mu)
    if noise_std > 0:
        out = out + noise_std * torch.randn(x.shape, generator=generator).to(x)
    return out.clamp(0.0, 1.0)


@dataclass
class BatchAugment:
    """One random view of a batch: ``BatchAugment(**cfg)(x, generator)``; x is float in [0, 1]."""

    scale: Sequence[float] = (0.6, 1.0)
    ratio: Sequence[float] = (3 / 4, 4 / 3)
    translate: float = 2.0
    hflip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        for name in ("hflip", "brightness", "contrast"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"augment.{name}={getattr(self, name)!r} must be in [0, 1]")
        for name in ("translate", "noise_std"):
            if not float(getattr(self, name)) >= 0.0:
                raise ValueError(f"augment.{name}={getattr(self, name)!r} must be >= 0")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        theta = affine_params(
            len(x),
            x.shape[-1],
            self.scale,
            self.ratio,
            self.translate,
            self.hflip,
            generator=generator,
        )
        return photometric(
            warp(x, theta), self.brightness, self.contrast, self.noise_std, generator=generator
        )
