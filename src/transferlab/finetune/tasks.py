"""Auxiliary tasks for multi-task fine-tuning: self-supervised labels made from the input itself.

Each task takes a batch and a generator and returns ``(inputs, labels)`` for an extra head on the
shared backbone, so every target (labelled or not) can carry one without new annotations.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotation_task(x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Rotate each image by ``k·90°`` with ``k ~ U{0,1,2,3}``; the label is ``k`` (Gidaris et al. 2018)."""
    k = torch.randint(0, 4, (len(x),), generator=generator)
    out = x.clone()
    for r in range(1, 4):
        sel = k == r
        if sel.any():
            out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    return out, k.to(x.device)


def shuffle_task(ids: Tensor, generator: torch.Generator, pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Shuffle the real (non-pad) tokens of a random half of the sequences; label 1 = shuffled.

    Word order is what a bag-of-words cannot see, so the head must use the backbone's contextual
    features to solve it.
    """
    label = torch.randint(0, 2, (len(ids),), generator=generator)
    out = ids.clone()
    for i in torch.nonzero(label).flatten().tolist():
        pos = torch.nonzero(ids[i] != pad_id).flatten()
        out[i, pos] = ids[i, pos[torch.randperm(len(pos), generator=generator)]]
    return out, label.to(ids.device)


# name → (function, number of classes)
AUX_TASKS = {"rotation": (rotation_task, 4), "shuffle": (shuffle_task, 2)}
