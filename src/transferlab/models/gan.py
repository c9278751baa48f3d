"""DCGAN-style generator and a discriminator built on the shared backbone trunk.

Generator (Radford et al., 2016, scaled to 28×28): ``z ~ N(0, I)`` of size ``latent_dim`` →
linear projection to a ``2w × s × s`` map (s = image_size / 4) → two stride-2 transposed
convolutions (s → 2s → 4s) with BatchNorm + ReLU between → sigmoid, so samples live in [0, 1] like
the real images the backbone sees.

Discriminator: the backbone trunk (the very module every other objective trains) + one linear logit
on its pooled features, ``D(x) = σ(wᵀ f(x) + b)``. The trunk is what transfers. Fake batches run
through it with BatchNorm *running* statistics frozen (``update_stats=False``): batch statistics
still normalise them, but the stored statistics, which fine-tuning and feature extraction use,
describe real images only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class Generator(nn.Module):
    """``z (B, latent_dim) → images (B, out_channels, image_size, image_size)`` in [0, 1]."""

    def __init__(
        self, latent_dim: int = 64, width: int = 64, out_channels: int = 1, image_size: int = 28
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"the generator needs image_size divisible by 4, got {image_size}")
        self.latent_dim = int(latent_dim)
        self.base = image_size // 4
        self.width = int(width)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, 2 * width * self.base * self.base, bias=False),
            nn.BatchNorm1d(2 * width * self.base * self.base),
            nn.ReLU(inplace=True),
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, out_channels, kernel_size=4, stride=2, padding=1),
            nn.Sigmoid(),
        )
        # DCGAN's initialisation: N(0, 0.02) weights, BatchNorm scales N(1, 0.02).
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(len(z), 2 * self.width, self.base, self.base)
        return self.upsample(h)


@contextmanager
def frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm layers in train mode normalise with batch statistics but leave
    their running mean/variance unchanged (momentum 0: running ← 1·running + 0·batch)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


class Discriminator(nn.Module):
    """``D(x) = σ(logit(x))``, ``logit(x) = wᵀ trunk(x) + b``; returns the logits (B,)."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.logit = nn.Linear(trunk.feature_dim, 1)

    def forward(self, x: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        if update_stats:
            return self.logit(self.trunk(x)).squeeze(1)
        with frozen_norm_stats(self.trunk):
            return self.logit(self.trunk(x)).squeeze(1)
