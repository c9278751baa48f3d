"""Shift between the text source (news) and each text target, in token space and feature space.

Token space, per target, on the source tokenizer's ids (the only vocabulary both sides share):

- ``kl_input = D_KL(P_source || P_target) = Σ_v p_v log(p_v / q_v)`` between add-α smoothed
  token-unigram distributions (:func:`transferlab.shift.estimators.unigram_kl`,
  ``p_v = (c_v + α) / (N + |V| α)``). Vocabulary ``V``: every id of the tokenizer except
  ``[PAD]``, ``[CLS]``, ``[SEP]`` and ``[MASK]`` (layout, not language); ``[UNK]`` stays, since
  characters outside the source alphabet (German umlauts) are part of the shift. Counts: every
  token of the source's LM blocks (train, val, test) and of the target's LM blocks
  (``unlabelled``, ``lm_val``, ``lm_test``: all of its text that the data stage kept).
- ``overlap_topk``: ``|T_k(target) ∩ T_k(source)| / k``, the share of the target's ``k`` most
  frequent tokens that are also among the source's (:func:`~transferlab.shift.estimators.topk_overlap`;
  a similarity: 1 = no shift in the common vocabulary).

Feature space: ``kl_feature``, the Gaussian-fit KL between the primary backbone's pooled features
of source and target LM blocks (``max_samples`` blocks per side), as for images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

#: Ids left out of the token distributions: [PAD]=0, [CLS]=2, [SEP]=3, [MASK]=4 (data/text.py).
LAYOUT_IDS: tuple[int, ...] = (0, 2, 3, 4)


def lm_blocks(data: dict[str, Any]) -> list[torch.Tensor]:
    """Every LM block tensor of a processed text dataset (source or target)."""
    if "unlabelled" in data:
        return [data[k] for k in ("unlabelled", "lm_val", "lm_test")]
    return [data[s]["x"] for s in ("train", "val", "test") if s in data]


def kept_ids(blocks: Iterable[torch.Tensor], exclude: Sequence[int] = LAYOUT_IDS) -> np.ndarray:
    """All token ids of ``blocks``, flattened, without the ``exclude`` ids."""
    ids = torch.cat([b.reshape(-1) for b in blocks])
    return ids[~torch.isin(ids, torch.tensor(list(exclude)))].numpy()


def vocabulary(vocab_size: int, exclude: Sequence[int] = LAYOUT_IDS) -> np.ndarray:
    """The ids the distributions range over: ``[0, vocab_size)`` without ``exclude``."""
    return np.setdiff1d(np.arange(vocab_size), np.asarray(exclude))


def token_shift(
    source_ids: np.ndarray, target_ids: np.ndarray, vocab_size: int, alpha: float, top_k: int
) -> dict[str, float]:
    """``{"kl_input", "overlap_topk"}`` for two flat arrays of kept token ids."""
    from transferlab.shift.estimators import topk_overlap, unigram_kl

    vocab = vocabulary(vocab_size)
    # Re-index onto the kept vocabulary so the smoothing covers exactly |V| types.
    index = np.full(vocab_size, -1, dtype=np.int64)
    index[vocab] = np.arange(len(vocab))
    s, t = index[source_ids], index[target_ids]
    return {
        "kl_input": unigram_kl(s, t, len(vocab), alpha),
        "overlap_topk": topk_overlap(source_ids, target_ids, top_k),
    }


@torch.no_grad()
def features(backbone: torch.nn.Module, blocks: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    backbone.eval()
    out = [backbone(blocks[i : i + batch_size]) for i in range(0, len(blocks), batch_size)]
    return torch.cat(out).double().numpy()


def subsample(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if len(x) <= n:
        return x
    g = torch.Generator().manual_seed(int(seed))
    return x[torch.randperm(len(x), generator=g)[:n].sort().values]
