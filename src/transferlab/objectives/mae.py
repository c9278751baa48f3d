"""Masked reconstruction (SimMIM-style MAE for a CNN): hide patches, reconstruct their pixels.

``mask_ratio`` of the ``patch_size×patch_size`` patches are zeroed in the input; a 1×1 convolution
plus pixel shuffle decodes the backbone's last map back to pixels, and the loss is the MSE on the
masked pixels only (:func:`transferlab.objectives.losses.masked_mse`): reconstructing visible pixels
would be trivial and teach the backbone nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transferlab.data.loaders import to_float
from transferlab.objectives.base import PretrainModule
from transferlab.objectives.losses import masked_mse, patch_mask, upsample_patch_mask


class MaskedReconstruction(PretrainModule):
    def __init__(
        self,
        backbone: nn.Module,
        mask_ratio: float = 0.75,
        patch_size: int = 4,
        image_size: int = 28,
        in_channels: int = 1,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(backbone, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
        if image_size % patch_size:
            raise ValueError(
                f"objectives.mae.patch_size={patch_size} must divide the image size {image_size}"
            )
        stride = backbone.out_stride
        self.mask_ratio = mask_ratio
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.decoder = nn.Sequential(
            nn.Conv2d(backbone.feature_dim, in_channels * stride * stride, kernel_size=1),
            nn.PixelShuffle(stride),
        )
        # Masks come from generators of their own: validation masks are the same every epoch (so
        # val/loss curves compare like with like) and training masks do not depend on what else
        # consumed the global RNG.
        self._gen = torch.Generator()
        self._val_gen = torch.Generator()

    def on_fit_start(self) -> None:
        self._gen.manual_seed(int(torch.initial_seed()) % (2**63))

    def on_validation_epoch_start(self) -> None:
        self._val_gen.manual_seed(int(torch.initial_seed()) % (2**63) + 1)

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        x = to_float(batch[0])
        mask = upsample_patch_mask(
            patch_mask(
                len(x),
                self.grid,
                self.mask_ratio,
                generator=self._gen if self.training else self._val_gen,
            ),
            self.patch_size,
        ).to(x.device)
        recon = self.decoder(self.backbone.forward_map(x * (1.0 - mask)))
        return {"loss": masked_mse(recon, x, mask)}
