"""Shift between the text source (news) and each text target, in token space and feature space.

Token space, per target, on the source tokenizer's ids (the only vocabulary both sides share):

- ``kl_input = D_KL(P_source || P_target) = Σ_v p_v log(p_v / q_v)`` between add-α smoothed
  token-unigram distributions (``p_v = (c_v + α) / (N + |V| α)``). Vocabulary ``V``: every id of
  the tokenizer except ``[PAD]``, ``[CLS]``, ``[SEP]`` and ``[MASK]`` (layout, not language);
  ``[UNK]`` stays, since characters outside the source alphabet (German umlauts) are part of the
  shift. Counts: every token of the source's LM blocks (train, val, test) and of the target's LM
  blocks (``unlabelled``, ``lm_val``, ``lm_test``: all of its text that the data stage kept).
- ``js_input``: the Jensen–Shannon divergence of the same smoothed distributions.
- ``overlap_topk``: ``|T_k(target) ∩ T_k(source)| / k``, the share of the target's ``k`` most
  frequent tokens that are also among the source's (a similarity: 1 = no shift in the common
  vocabulary).

All three come from per-block count vectors (:func:`block_counts`) through
:func:`transferlab.shift.measures.token_measures`, so that the bootstrap can resample whole blocks
(:func:`transferlab.shift.measures.bootstrap_groups`) at the cost of a sparse mat-vec per draw.

Feature space: the primary backbone's pooled features of source and target LM blocks
(``max_samples`` blocks per side), with the image route's estimators
(:func:`transferlab.shift.measures.feature_measures`: Gaussian-fit KL, k-NN KL, RBF MMD, PAD).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import sparse

from transferlab.shift.measures import DESCRIPTIONS, token_measures

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


def _kept_index(vocab_size: int, exclude: Sequence[int] = LAYOUT_IDS) -> np.ndarray:
    """Map token id → column of the kept vocabulary (−1 for excluded ids).

    The map is increasing, so "smaller id first" tie-breaking is the same on both sides.
    """
    vocab = vocabulary(vocab_size, exclude)
    index = np.full(vocab_size, -1, dtype=np.int64)
    index[vocab] = np.arange(len(vocab))
    return index


def token_shift(
    source_ids: np.ndarray, target_ids: np.ndarray, vocab_size: int, alpha: float, top_k: int
) -> dict[str, float]:
    """``{"kl_input", "js_input", "overlap_topk"}`` for two flat arrays of kept token ids."""
    index = _kept_index(vocab_size)
    n = int(index.max()) + 1
    # Counts over the kept vocabulary, so the smoothing covers exactly |V| types.
    c_s = np.bincount(index[source_ids], minlength=n)
    c_t = np.bincount(index[target_ids], minlength=n)
    return token_measures(c_s, c_t, alpha, top_k)


def block_counts(blocks: Iterable[torch.Tensor], vocab_size: int) -> Any:
    """One row of kept-token counts per LM block: a ``scipy.sparse`` CSR ``(n_blocks, |V|)``.

    Row sums are the blocks' kept tokens; the column sums are the counts :func:`token_shift`
    takes from :func:`kept_ids` of the same blocks.
    """
    ids = torch.cat([b.reshape(len(b), -1) for b in blocks]).numpy()
    index = _kept_index(vocab_size)
    n_blocks, length = ids.shape
    cols = index[ids.ravel()]
    rows = np.repeat(np.arange(n_blocks), length)
    keep = cols >= 0
    ones = np.ones(int(keep.sum()), dtype=np.float64)
    shape = (n_blocks, int(index.max()) + 1)
    return sparse.csr_matrix((ones, (rows[keep], cols[keep])), shape=shape)  # duplicates summed


def descriptions(
    vocab_size: int, alpha: float, top_k: int, primary: str, eps: float, n_max: int, knn_k: int
) -> dict[str, str]:
    """``shift.json``'s ``estimators``: what each text measure is, with the settings used."""
    v = len(vocabulary(vocab_size))
    feats = f"'{primary}' backbone's pooled features of at most {n_max} LM blocks per side"
    return {
        "kl_input": f"D_KL(P_s||P_t) of add-{alpha} smoothed token-unigram distributions over the "
        f"source tokenizer's {v} ids (all but [PAD] [CLS] [SEP] [MASK]); plug-in, biased up by "
        "~(V-1)(1/N_s+1/N_t)/2, toward 0 by the smoothing",
        "js_input": "Jensen-Shannon divergence of the same smoothed unigram distributions "
        "(nats, symmetric, <= ln 2)",
        "kl_feature": DESCRIPTIONS["kl_feature"] + f" [{feats}, ridge {eps}]",
        "kl_feature_knn": DESCRIPTIONS["kl_feature_knn"] + f" [{feats}, k={knn_k}]",
        "mmd_feature": DESCRIPTIONS["mmd_feature"] + f" [{feats}]",
        "pad_feature": DESCRIPTIONS["pad_feature"] + f" [{feats}]",
        "overlap_topk": f"share of the target's top-{top_k} tokens among the source's "
        f"top-{top_k} (a similarity: 1 = no shift)",
        "test_ppl": f"perplexity of the '{primary}' model on the target's held-out text "
        "(masked-token perplexity for MLM)",
    }
