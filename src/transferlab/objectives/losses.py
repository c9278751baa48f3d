"""Pre-training and fine-tuning losses as small pure functions: tensors in, tensor out.

Every function's docstring states its formula, so a formula can be found from its name:

========================  ============================================================
``masked_mse``            masked image modelling (MAE / SimMIM) reconstruction
``patch_mask``            random patch mask with an exact number of masked patches
``upsample_patch_mask``   patch mask (B, g²) → pixel mask (B, 1, g·p, g·p)
``patch_normalize``       per-patch normalised pixels (MAE's norm_pix_loss target)
``mlm_mask_tokens``       BERT 80/10/10 input corruption and labels
``mlm_loss``              masked language modelling cross-entropy
``clm_loss``              causal (next-token) language modelling cross-entropy
``perplexity``            exp of a mean cross-entropy
``nt_xent``               SimCLR normalised temperature-scaled cross-entropy
``info_nce``              InfoNCE with positives on the diagonal (MoCo style)
``clip_loss``             CLIP symmetric image–text contrastive loss
``gan_*``                 non-saturating GAN losses, stable (logits) and naive (probabilities)
``weighted_sum``          L = Σᵢ λᵢ Lᵢ over named losses
``supervised_ce``         cross-entropy with optional label smoothing
========================  ============================================================

Shapes use B = batch, C = channels, H/W = height/width, T = sequence length, V = vocabulary
size, N = number of pairs and D = embedding width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
"""Label value that cross-entropy skips (PyTorch's and Hugging Face's convention)."""

__all__ = [
    "IGNORE_INDEX",
    "clip_loss",
    "clm_loss",
    "gan_discriminator_loss",
    "gan_discriminator_loss_naive",
    "gan_generator_loss",
    "gan_generator_loss_naive",
    "info_nce",
    "masked_mse",
    "mlm_loss",
    "mlm_mask_tokens",
    "nt_xent",
    "patch_mask",
    "patch_normalize",
    "perplexity",
    "supervised_ce",
    "upsample_patch_mask",
    "weighted_sum",
]


# --------------------------------------------------------------------------------------------
# private helpers
# --------------------------------------------------------------------------------------------


def _rand(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device | None = None
) -> Tensor:
    """Uniform [0, 1) noise drawn on the generator's device, then moved to ``device``.

    A CPU generator cannot drive CUDA sampling, so drawing where the generator lives keeps
    results reproducible for a given seed regardless of where the data sits.
    """
    gen_device = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=gen_device).to(device)


def _check_positive(name: str, value: float | Tensor) -> None:
    # Only plain numbers are checked: inspecting a tensor would force a device sync every step.
    if not isinstance(value, Tensor) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _require_labels(mask: Tensor, what: str) -> None:
    if not bool(mask.any()):
        raise ValueError(f"{what}: no positions to average over (all labels are ignored)")


# --------------------------------------------------------------------------------------------
# masked image modelling
# --------------------------------------------------------------------------------------------


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over masked pixels only (MAE / SimMIM reconstruction loss).

    L = Σ_{b,c,h,w} m_{b,h,w} (ŷ_{b,c,h,w} − y_{b,c,h,w})² / Σ_{b,c,h,w} m_{b,h,w}

    The denominator counts channels, so L is the mean over masked *elements*.

    Args:
        pred: reconstruction ŷ, shape (B, C, H, W).
        target: original image y, shape (B, C, H, W).
        mask: m, 1/True = masked; shape (B, 1, H, W) or anything broadcastable to ``pred``.
            Non-zero values count as masked.

    Raises:
        ValueError: if shapes differ or nothing is masked (the mean would be 0/0).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    # Expanding before counting makes the denominator include every masked channel.
    m = (mask != 0).expand_as(pred)
    n_masked = m.sum()
    if not bool(n_masked > 0):
        raise ValueError("masked_mse: mask selects no element; at least one must be masked")
    sq_err = (pred - target).pow(2)
    return (sq_err * m).sum() / n_masked


def patch_mask(
    batch: int, grid: int, mask_ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """Random patch mask with exactly k = round(r · g²) masked patches per sample.

    Each row masks a subset of size k chosen uniformly at random: the first k indices of a
    random permutation (``argsort`` of i.i.d. uniform noise) are set to True.

    Args:
        batch: B, number of samples.
        grid: g, patches per side; the image has g² patches.
        mask_ratio: r ∈ [0, 1], fraction of patches to mask.
        generator: optional ``torch.Generator``; the same seed gives the same mask.

    Returns:
        Bool tensor (B, g²), True = masked, on the generator's device (CPU by default).
    """
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio!r}")
    if batch < 1 or grid < 1:
        raise ValueError(f"batch and grid must be >= 1, got batch={batch}, grid={grid}")
    n_patches = grid * grid
    n_masked = round(mask_ratio * n_patches)
    noise = _rand((batch, n_patches), generator)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch, n_patches, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, order[:, :n_masked], True)
    return mask


def upsample_patch_mask(mask: Tensor, patch_size: int) -> Tensor:
    """Turn a patch mask (B, g²) into a pixel mask (B, 1, g·p, g·p) of 0.0/1.0.

    Pixel (h, w) takes the value of patch (⌊h/p⌋, ⌊w/p⌋), patches in row-major order.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape (B, g*g), got {tuple(mask.shape)}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    batch, n_patches = mask.shape
    grid = math.isqrt(n_patches)
    if grid * grid != n_patches:
        raise ValueError(f"mask has {n_patches} patches per row; must be a square number")
    m = mask.reshape(batch, 1, grid, grid).float()
    return m.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def patch_normalize(x: Tensor, patch_size: int, eps: float = 1e-6) -> Tensor:
    """Normalise every p×p patch of every channel by its own mean and standard deviation.

    For patch P (p² pixels of one channel): ŷ_i = (y_i − μ_P) / √(σ²_P + ε), i ∈ P, with
    μ_P = (1/p²) Σ_{j∈P} y_j and the unbiased σ²_P = Σ_{j∈P} (y_j − μ_P)² / (p² − 1) (MAE's
    ``norm_pix_loss`` target). A constant patch (blank background) becomes 0.

    Args:
        x: images (B, C, H, W) with H and W divisible by p.
        patch_size: p ≥ 2.
        eps: ε > 0.
    """
    if patch_size < 2:
        raise ValueError(f"patch_size must be >= 2 for a patch variance, got {patch_size}")
    b, c, h, w = x.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide the image size {h}×{w}")
    p = patch_size
    patches = x.reshape(b, c, h // p, p, w // p, p)
    mean = patches.mean(dim=(3, 5), keepdim=True)
    var = patches.var(dim=(3, 5), keepdim=True, unbiased=True)
    return ((patches - mean) / (var + eps).sqrt()).reshape(b, c, h, w)


# --------------------------------------------------------------------------------------------
# language modelling
# --------------------------------------------------------------------------------------------


def mlm_mask_tokens(
    ids: Tensor,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    special_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT input corruption with the 80/10/10 rule.

    Each non-special position is chosen independently with probability ``mask_prob``
    (so ≈ 15 % of them by default). A chosen token x_i becomes

        x̃_i = [MASK]               with probability 0.8
        x̃_i = u, u ~ U(allowed)    with probability 0.1
        x̃_i = x_i                  with probability 0.1

    where ``allowed`` is [0, V) without ``special_ids`` and ``mask_token_id``, so a random
    replacement never injects a control token. Keeping 10 % unchanged and 10 % random stops the
    model from learning that only [MASK] positions matter.

    Args:
        ids: integer token ids, any shape (typically (B, T)). Not modified.
        mask_token_id: id of [MASK].
        vocab_size: V.
        mask_prob: probability that a non-special position is chosen.
        special_ids: ids never chosen (padding, [CLS], [SEP], ...).
        generator: optional ``torch.Generator``; same seed → same output.

    Returns:
        ``(inputs, labels)``: ``inputs`` = x̃; ``labels`` = x_i at chosen positions and
        ``IGNORE_INDEX`` (−100) elsewhere.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob!r}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(
            f"mask_token_id must be in [0, vocab_size={vocab_size}), got {mask_token_id}"
        )
    device = ids.device
    special = torch.tensor(sorted({int(s) for s in special_ids}), dtype=ids.dtype, device=device)
    vocab = torch.arange(vocab_size, dtype=ids.dtype, device=device)
    allowed = vocab[~torch.isin(vocab, special) & (vocab != mask_token_id)]
    if allowed.numel() == 0:
        raise ValueError("mlm_mask_tokens: every vocabulary id is special; nothing to sample")

    candidate = ~torch.isin(ids, special)
    chosen = (_rand(ids.shape, generator, device) < mask_prob) & candidate

    # One uniform draw per position decides the 80/10/10 branch.
    branch = _rand(ids.shape, generator, device)
    to_mask = chosen & (branch < 0.8)
    to_random = chosen & (branch >= 0.8) & (branch < 0.9)

    pick = (_rand(ids.shape, generator, device) * allowed.numel()).long()
    pick = pick.clamp_(max=allowed.numel() - 1)  # guards against rand rounding up to 1.0
    random_tokens = allowed[pick]

    inputs = ids.clone()
    inputs[to_mask] = mask_token_id
    inputs[to_random] = random_tokens[to_random]
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Masked language modelling loss: cross-entropy over chosen positions only.

    L = −(1/|M|) Σ_{i∈M} log p(y_i | x̃),   M = {i : labels_i ≠ −100},
    p(· | x̃) = softmax(logits_i).

    Args:
        logits: (B, T, V).
        labels: (B, T), original id at chosen positions and −100 elsewhere.

    Raises:
        ValueError: if no position has a label (the mean would be 0/0).
    """
    _require_labels(labels != IGNORE_INDEX, "mlm_loss")
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def clm_loss(
    logits: Tensor, ids: Tensor, pad_id: int | None = None, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Causal (next-token) language modelling loss.

    L = −(1/|S|) Σ_{(b,t)∈S} log p(x_{b,t+1} | x_{b,≤t}),   p(· | x_{≤t}) = softmax(logits_{b,t})

    where S holds every t ∈ {1, …, T−1} (1-based) whose target x_{t+1} is neither ``pad_id``
    nor ``ignore_index``; without padding |S| = B·(T−1). ``logits[:, t]`` predicts
    ``ids[:, t + 1]``, so the comparison is ``logits[:, :-1]`` against ``ids[:, 1:]``.

    Args:
        logits: (B, T, V).
        ids: (B, T) token ids.
        pad_id: optional padding id; targets equal to it are ignored.
        ignore_index: target value that is ignored (default −100).

    Raises:
        ValueError: if T < 2 or every target is ignored.
    """
    if ids.dim() != 2 or ids.size(1) < 2:
        raise ValueError(f"ids must have shape (B, T) with T >= 2, got {tuple(ids.shape)}")
    targets = ids[:, 1:]
    if pad_id is not None:
        targets = targets.masked_fill(targets == pad_id, ignore_index)
    _require_labels(targets != ignore_index, "clm_loss")
    pred = logits[:, :-1]
    return F.cross_entropy(
        pred.reshape(-1, pred.size(-1)), targets.reshape(-1), ignore_index=ignore_index
    )


def perplexity(mean_ce: Tensor | float) -> Tensor | float:
    """Perplexity PPL = exp(L̄), L̄ = mean cross-entropy in nats.

    Uniform predictions over V tokens give L̄ = log V, hence PPL = V. A tensor in gives a tensor
    out; a number in gives a float out (``inf`` instead of an ``OverflowError``).
    """
    if isinstance(mean_ce, Tensor):
        return torch.exp(mean_ce)
    try:
        return math.exp(float(mean_ce))
    except OverflowError:
        return math.inf


# --------------------------------------------------------------------------------------------
# contrastive
# --------------------------------------------------------------------------------------------


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR NT-Xent (normalised temperature-scaled cross-entropy) over 2N views.

    Stack the views z = [z1; z2] ∈ ℝ^{2N×D}, normalise ẑ_k = z_k / ‖z_k‖ and let
    sim(i, k) = ẑ_iᵀ ẑ_k. Anchor i's positive p(i) is the other view of the same sample
    (i ± N); the other 2N − 2 views are negatives:

        ℓ_i = −log( exp(sim(i, p(i))/τ) / Σ_{k≠i} exp(sim(i, k)/τ) )
        L   = (1/2N) Σ_{i=1}^{2N} ℓ_i

    Args:
        z1, z2: (N, D) embeddings of two augmented views; row n of each is the same sample.
        temperature: τ > 0.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)}, {tuple(z2.shape)}")
    _check_positive("temperature", temperature)
    n = z1.size(0)
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = z @ z.T / temperature
    # Excluding k = i from the denominator: -inf becomes exp(-inf) = 0 inside the softmax.
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return F.cross_entropy(sim, targets)


def info_nce(query: Tensor, keys: Tensor, temperature: float = 0.1) -> Tensor:
    """InfoNCE with positives on the diagonal (MoCo / CPC style, in-batch negatives).

    With q̂_i = q_i/‖q_i‖ and k̂_j = k_j/‖k_j‖:

        L = −(1/N) Σ_i log( exp(q̂_iᵀ k̂_i / τ) / Σ_j exp(q̂_iᵀ k̂_j / τ) )

    i.e. the mean cross-entropy of the rows of q̂ k̂ᵀ / τ against targets 0, 1, …, N−1.

    Args:
        query: (N, D).
        keys: (N, D); row i is the positive for query i, the other rows are its negatives.
        temperature: τ > 0.
    """
    if query.shape != keys.shape or query.dim() != 2:
        raise ValueError(
            f"query and keys must both be (N, D); got {tuple(query.shape)}, {tuple(keys.shape)}"
        )
    _check_positive("temperature", temperature)
    logits = F.normalize(query, dim=1) @ F.normalize(keys, dim=1).T / temperature
    targets = torch.arange(query.size(0), device=query.device)
    return F.cross_entropy(logits, targets)


def clip_loss(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float = 1.0 / 0.07
) -> Tensor:
    """CLIP symmetric contrastive loss with diagonal positives.

    With Î, T̂ the row-normalised embeddings and s = ``logit_scale`` = 1/τ, form the logits
    S = s · Î T̂ᵀ ∈ ℝ^{N×N}. Then

        L_{I→T} = −(1/N) Σ_i log( exp(S_ii) / Σ_j exp(S_ij) )    (rows: image → text)
        L_{T→I} = −(1/N) Σ_j log( exp(S_jj) / Σ_i exp(S_ij) )    (columns: text → image)
        L       = (L_{I→T} + L_{T→I}) / 2

    Args:
        image_emb: (N, D).
        text_emb: (N, D); row i is the caption of image i.
        logit_scale: s > 0, already exponentiated. CLIP learns t and uses s = exp(t), clipped
            to ≤ 100; pass that tensor here. The default 1/0.07 is CLIP's initial value.
    """
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(
            "image_emb and text_emb must both be (N, D); got "
            f"{tuple(image_emb.shape)}, {tuple(text_emb.shape)}"
        )
    _check_positive("logit_scale", logit_scale)
    logits = logit_scale * F.normalize(image_emb, dim=1) @ F.normalize(text_emb, dim=1).T
    targets = torch.arange(image_emb.size(0), device=image_emb.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


# --------------------------------------------------------------------------------------------
# GAN (non-saturating), D = sigmoid(logit)
# --------------------------------------------------------------------------------------------


def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss from discriminator logits ℓ = logit D(G(z)).

    L_G = −(1/M) Σ_j log D(G(z_j)) = (1/M) Σ_j softplus(−ℓ_j)

    using −log σ(ℓ) = log(1 + e^{−ℓ}) = softplus(−ℓ), which stays finite where σ(ℓ) rounds to 0.
    """
    return F.softplus(-fake_logits).mean()


def gan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss from logits ℓ_r = logit D(x), ℓ_f = logit D(G(z)).

    L_D = −(1/N) Σ_i log D(x_i) − (1/M) Σ_j log(1 − D(G(z_j)))
        =  (1/N) Σ_i softplus(−ℓ_{r,i}) + (1/M) Σ_j softplus(ℓ_{f,j})

    i.e. the *sum* of the real-term mean and the fake-term mean (each averaged over its own
    batch, so N ≠ M is allowed). Uses −log(1 − σ(ℓ)) = softplus(ℓ).
    """
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def gan_generator_loss_naive(d_fake_prob: Tensor) -> Tensor:
    """Literal L_G = −mean log D(G(z)) from probabilities.

    For tests and documentation only: gives ``inf`` once D(G(z)) underflows to 0. Train with
    :func:`gan_generator_loss`.
    """
    return -torch.log(d_fake_prob).mean()


def gan_discriminator_loss_naive(d_real_prob: Tensor, d_fake_prob: Tensor) -> Tensor:
    """Literal L_D = −mean log D(x) − mean log(1 − D(G(z))) from probabilities.

    For tests and documentation only: gives ``inf`` once D(x) → 0 or D(G(z)) rounds to 1. Train
    with :func:`gan_discriminator_loss`.
    """
    return -torch.log(d_real_prob).mean() - torch.log(1 - d_fake_prob).mean()


# --------------------------------------------------------------------------------------------
# combination and supervised
# --------------------------------------------------------------------------------------------


def weighted_sum(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """Weighted total loss L = Σ_i λ_i L_i over named losses.

    Args:
        losses: name → scalar loss L_i.
        weights: name → λ_i ≥ 0; must have exactly the keys of ``losses``, not all zero.

    Raises:
        ValueError: if the key sets differ, a weight is negative (or NaN), or all are zero.
    """
    missing = sorted(set(losses) - set(weights))
    if missing:
        raise ValueError(
            f"loss {missing[0]!r} has no weight; weights must have the keys {sorted(losses)}"
        )
    extra = sorted(set(weights) - set(losses))
    if extra:
        raise ValueError(f"weight {extra[0]!r} names no loss; allowed keys are {sorted(losses)}")
    if not losses:
        raise ValueError("weighted_sum: no losses given; at least one is required")
    for key in sorted(weights):
        w = float(weights[key])
        if not w >= 0:  # also rejects NaN
            raise ValueError(f"weight {key!r} is {weights[key]!r}; weights must be >= 0")
    if all(float(w) == 0.0 for w in weights.values()):
        raise ValueError(f"all weights are zero for {sorted(weights)}; at least one must be > 0")
    keys = sorted(losses)
    total = weights[keys[0]] * losses[keys[0]]
    for key in keys[1:]:
        total = total + weights[key] * losses[key]
    return total


def supervised_ce(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Supervised cross-entropy with optional label smoothing ε.

    L = −(1/B) Σ_b Σ_c q_{b,c} log softmax(logits_b)_c,   q_b = (1 − ε)·onehot(y_b) + ε/C

    With ε = 0 this is −(1/B) Σ_b log p(y_b | x_b). Labels equal to −100 are ignored.

    Args:
        logits: (B, C).
        labels: (B,) class indices.
        label_smoothing: ε ∈ [0, 1].
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return F.cross_entropy(
        logits, labels, label_smoothing=label_smoothing, ignore_index=IGNORE_INDEX
    )
