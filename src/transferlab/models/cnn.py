"""A small convolutional backbone for 28×28 grey-scale images.

Four blocks of ``conv3x3 → BatchNorm → ReLU``; blocks 2 and 3 halve the resolution, so a
28×28 input leaves block 4 as a ``widths[-1] × 7 × 7`` map that is average-pooled into the feature
vector. Every pre-training objective (masked reconstruction, contrastive, GAN discriminator,
supervised) trains this same trunk, which is what makes their transfer comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.norm(self.conv(x))))


class ConvNet(nn.Module):
    """Backbone: ``x (B, C, 28, 28) → features (B, widths[-1])``."""

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64, 96, 128),
        strides: Sequence[int] = (1, 2, 2, 1),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(
                f"model.widths and model.strides differ in length: {widths} vs {strides}"
            )
        chans = [in_channels, *widths]
        self.blocks = nn.ModuleList(
            ConvBlock(chans[i], chans[i + 1], strides[i], dropout) for i in range(len(widths))
        )
        self.feature_dim = int(widths[-1])
        self.out_stride = int(torch.tensor(list(strides)).prod())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Channels-last (NHWC) weights and activations: oneDNN's CPU convolutions run this trunk's
        # forward + backward ~15 % faster than in NCHW (scripts/bench.py; same values, same
        # state-dict keys; still bitwise reproducible run to run).
        self.to(memory_format=torch.channels_last)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_map(x).mean(dim=(2, 3))


class Classifier(nn.Module):
    """A backbone with a linear head: the model every target is fine-tuned as."""

    def __init__(self, backbone: nn.Module, num_classes: int, head_dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(head_dropout) if head_dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))
