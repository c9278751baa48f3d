"""The raw-input "backbones" of the linear-probe floor: no learnt weights, the input itself as the
feature vector, so that a probe on them measures what a linear model gets without any
representation (pixels for images, a bag of tokens for text)."""

from __future__ import annotations

import torch
from torch import nn

from transferlab.data.loaders import to_float


class RawPixels(nn.Module):
    """``f(x) = vec(x)``: the ``channels × size × size`` pixel values (scaled to [0, 1])."""

    num_blocks = 0

    def __init__(self, in_channels: int = 1, size: int = 28) -> None:
        super().__init__()
        self.feature_dim = int(in_channels) * int(size) * int(size)
        self.blocks = nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_float(x).flatten(1)


class BagOfTokens(nn.Module):
    """``f(ids)_v = #{i : ids_i = v} / #{i : ids_i ≠ pad}``: the token-frequency vector of a
    sequence (padding ignored), the bag-of-words floor of text classification."""

    num_blocks = 0

    def __init__(self, vocab_size: int, pad_id: int = 0) -> None:
        super().__init__()
        self.feature_dim = int(vocab_size)
        self.pad_id = int(pad_id)
        self.blocks = nn.ModuleList()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros(ids.shape[0], self.feature_dim, dtype=torch.float32)
        counts.scatter_add_(1, ids.long(), torch.ones(ids.shape, dtype=torch.float32))
        counts[:, self.pad_id] = 0.0
        return counts / counts.sum(1, keepdim=True).clamp_min(1.0)
