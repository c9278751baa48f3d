"""Tests for transferlab.objectives.losses, checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from transferlab.objectives.losses import (
    IGNORE_INDEX,
    clip_loss,
    clm_loss,
    gan_discriminator_loss,
    gan_discriminator_loss_naive,
    gan_generator_loss,
    gan_generator_loss_naive,
    info_nce,
    masked_mse,
    mlm_loss,
    mlm_mask_tokens,
    nt_xent,
    patch_mask,
    perplexity,
    supervised_ce,
    upsample_patch_mask,
    weighted_sum,
)

S = 1 / math.sqrt(2)


def _log_softmax(row: list[float], k: int) -> float:
    return row[k] - math.log(sum(math.exp(v) for v in row))


def _close(actual: torch.Tensor | float, expected: float, tol: float = 1e-5) -> None:
    assert float(actual) == pytest.approx(expected, abs=tol, rel=tol)


# ------------------------------------------------------------------ masked_mse / patch masks


def _mse_example() -> tuple[torch.Tensor, torch.Tensor, list[list[float]]]:
    # One masked pixel at (0, 0); channel errors 1 and 3 → (1² + 3²) / 2 = 5.
    pred = torch.full((1, 2, 2, 2), 1000.0)
    pred[0, 0, 0, 0] = 1.0
    pred[0, 1, 0, 0] = -3.0
    target = torch.zeros(1, 2, 2, 2)
    mask = [[1.0, 0.0], [0.0, 0.0]]
    return pred, target, mask


def test_masked_mse_ignores_unmasked_error() -> None:
    pred, target, mask = _mse_example()
    float_mask = torch.tensor(mask).reshape(1, 1, 2, 2)
    _close(masked_mse(pred, target, float_mask), 5.0)
    _close(masked_mse(pred, target, float_mask.bool()), 5.0)


def test_masked_mse_counts_channels_and_samples() -> None:
    pred = torch.zeros(2, 3, 1, 2)
    pred[0, :, 0, 1] = 2.0  # masked in sample 0: 3 channels × 4
    pred[1, :, 0, 0] = 1.0  # masked in sample 1: 3 channels × 1
    pred[1, :, 0, 1] = 50.0  # unmasked
    mask = torch.tensor([[[[0, 1]]], [[[1, 0]]]], dtype=torch.bool)
    _close(masked_mse(pred, torch.zeros_like(pred), mask), (3 * 4 + 3 * 1) / 6)


def test_masked_mse_empty_mask_raises() -> None:
    x = torch.ones(1, 3, 2, 2)
    with pytest.raises(ValueError, match="no element"):
        masked_mse(x, torch.zeros_like(x), torch.zeros(1, 1, 2, 2))


def test_patch_mask_exact_count_and_randomness() -> None:
    g = torch.Generator().manual_seed(0)
    mask = patch_mask(8, 4, 0.75, generator=g)
    assert mask.dtype == torch.bool
    assert mask.shape == (8, 16)
    assert mask.sum(dim=1).tolist() == [12] * 8
    assert len({tuple(row.tolist()) for row in mask}) > 1


def test_patch_mask_seeded_is_reproducible() -> None:
    a = patch_mask(4, 7, 0.6, generator=torch.Generator().manual_seed(3))
    b = patch_mask(4, 7, 0.6, generator=torch.Generator().manual_seed(3))
    c = patch_mask(4, 7, 0.6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.sum(dim=1).tolist() == [round(0.6 * 49)] * 4  # 29


@pytest.mark.parametrize(("ratio", "count"), [(0.0, 0), (1.0, 9)])
def test_patch_mask_edge_ratios(ratio: float, count: int) -> None:
    assert patch_mask(2, 3, ratio).sum(dim=1).tolist() == [count, count]


def test_patch_mask_bad_ratio_raises() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        patch_mask(1, 2, 1.5)


def test_upsample_patch_mask_by_hand() -> None:
    mask = torch.tensor([[True, False, False, True]])
    expected = torch.tensor(
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32
    )
    out = upsample_patch_mask(mask, 2)
    assert out.shape == (1, 1, 4, 4)
    assert out.dtype == torch.float32
    assert torch.equal(out[0, 0], expected)


# ------------------------------------------------------------------ MLM


def test_mlm_mask_tokens_statistics() -> None:
    pad, cls, sep, mask_id, vocab = 0, 1, 2, 3, 1000
    ids = torch.randint(4, vocab, (400, 500), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = cls
    ids[:, -1] = sep
    ids[::2, -50:-1] = pad
    original = ids.clone()
    special = ids <= sep

    inputs, labels = mlm_mask_tokens(
        ids, mask_id, vocab, 0.15, special_ids=(pad, cls, sep),
        generator=torch.Generator().manual_seed(123),
    )  # fmt: skip
    assert torch.equal(ids, original)
    chosen = labels != IGNORE_INDEX

    assert not chosen[special].any()
    assert torch.equal(inputs[special], ids[special])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    assert (labels[~chosen] == IGNORE_INDEX).all()
    assert torch.equal(labels[chosen], ids[chosen])

    frac = chosen.sum().item() / (~special).sum().item()
    assert abs(frac - 0.15) < 0.015
    n = chosen.sum().item()
    masked = (inputs == mask_id) & chosen
    unchanged = (inputs == ids) & chosen
    randomised = chosen & ~masked & ~unchanged
    assert abs(masked.sum().item() / n - 0.8) < 0.015
    assert abs(unchanged.sum().item() / n - 0.1) < 0.015
    assert abs(randomised.sum().item() / n - 0.1) < 0.015
    replaced = inputs[randomised]
    assert ((replaced > mask_id) & (replaced < vocab)).all()


def test_mlm_mask_tokens_deterministic_given_seed() -> None:
    ids = torch.randint(5, 50, (4, 64), generator=torch.Generator().manual_seed(0))
    a = mlm_mask_tokens(ids, 4, 50, generator=torch.Generator().manual_seed(7))
    b = mlm_mask_tokens(ids, 4, 50, generator=torch.Generator().manual_seed(7))
    c = mlm_mask_tokens(ids, 4, 50, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mlm_loss_only_counts_labelled_positions() -> None:
    rows = [[5.0, -3.0, 0.0], [1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]
    logits = torch.tensor([rows])
    labels = torch.tensor([[IGNORE_INDEX, 0, 2]])
    expected = -(_log_softmax(rows[1], 0) + _log_softmax(rows[2], 2)) / 2
    if_counted = -(_log_softmax(rows[0], 1) + _log_softmax(rows[1], 0) + _log_softmax(rows[2], 2))
    assert abs(expected - if_counted / 3) > 0.5
    _close(mlm_loss(logits, labels), expected)


def test_mlm_loss_no_labels_raises() -> None:
    with pytest.raises(ValueError, match="no positions"):
        mlm_loss(torch.zeros(1, 2, 3), torch.full((1, 2), IGNORE_INDEX))


# ------------------------------------------------------------------ CLM / perplexity


def test_clm_loss_by_hand() -> None:
    rows = [[0.0, 1.0, 2.0], [3.0, 0.0, -1.0], [9.0, -9.0, 9.0]]
    logits = torch.tensor([rows])
    ids = torch.tensor([[0, 2, 1]])
    # logits[0] predicts ids[1] = 2, logits[1] predicts ids[2] = 1; logits[2] predicts nothing.
    lp = [_log_softmax(rows[0], 2), _log_softmax(rows[1], 1)]
    _close(clm_loss(logits, ids), -(lp[0] + lp[1]) / 2)
    # ln softmax([0,1,2])[2] = 2 − ln(1 + e + e²) ≈ −0.407606
    assert lp[0] == pytest.approx(-0.4076059644, abs=1e-9)


def test_clm_loss_ignores_pad_targets() -> None:
    rows = [[0.0, 1.0, 2.0], [3.0, 0.0, -1.0], [0.0, 0.0, 0.0]]
    logits = torch.tensor([rows])
    ids = torch.tensor([[0, 2, 1]])
    _close(clm_loss(logits, ids, pad_id=1), -_log_softmax(rows[0], 2))


def test_perplexity_of_uniform_logits_is_vocab_size() -> None:
    vocab = 7
    ce = clm_loss(torch.zeros(2, 5, vocab), torch.randint(0, vocab, (2, 5)))
    _close(ce, math.log(vocab))
    ppl = perplexity(ce)
    assert isinstance(ppl, torch.Tensor)
    _close(ppl, 7.0)


def test_perplexity_float_in_float_out() -> None:
    ppl = perplexity(math.log(3.0))
    assert isinstance(ppl, float)
    assert ppl == pytest.approx(3.0)
    assert perplexity(1e6) == math.inf


# ------------------------------------------------------------------ contrastive


def test_nt_xent_by_hand() -> None:
    # Views after normalisation: a=(1,0), b=(0,1) | c=(s,s), d=(−s,s); pairs (a,c) and (b,d).
    z1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    tau = 0.5
    e = math.exp
    pos, zero, neg = e(S / tau), 1.0, e(-S / tau)
    l_a = -math.log(pos / (zero + pos + neg))  # sims to b, c, d: 0, s, −s
    l_b = -math.log(pos / (zero + pos + pos))  # to a, c, d: 0, s, s
    l_c = -math.log(pos / (pos + pos + zero))  # to a, b, d: s, s, 0
    l_d = -math.log(pos / (neg + pos + zero))  # to a, b, c: −s, s, 0
    _close(nt_xent(z1, z2, temperature=tau), (l_a + l_b + l_c + l_d) / 4)


def test_nt_xent_aligned_beats_random() -> None:
    eye = torch.eye(4)
    aligned = nt_xent(eye, eye.clone(), temperature=0.5)
    # Positive sim 1, six negatives with sim 0: −log(e² / (e² + 6)).
    _close(aligned, -math.log(math.exp(2) / (math.exp(2) + 6)))
    g = torch.Generator().manual_seed(0)
    random = nt_xent(torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g), 0.5)
    assert aligned < random


def test_info_nce_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # k̂ = (1,0), (s,s)
    tau = 0.5
    row0 = [1 / tau, S / tau]  # target 0
    row1 = [0.0, S / tau]  # target 1
    expected = -(_log_softmax(row0, 0) + _log_softmax(row1, 1)) / 2
    _close(info_nce(q, k, temperature=tau), expected)


def test_clip_loss_by_hand_and_symmetric() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 1.0], [0.0, 2.0]])  # t̂ = (s,s), (0,1)
    scale = 2.0
    # S = scale · Î T̂ᵀ = [[2s, 0], [2s, 2]]
    i2t = -(_log_softmax([2 * S, 0.0], 0) + _log_softmax([2 * S, 2.0], 1)) / 2
    t2i = -(_log_softmax([2 * S, 2 * S], 0) + _log_softmax([0.0, 2.0], 1)) / 2
    expected = (i2t + t2i) / 2
    _close(clip_loss(img, txt, logit_scale=scale), expected)
    _close(clip_loss(txt, img, logit_scale=scale), expected)
    assert i2t != pytest.approx(t2i)


def test_contrastive_bad_temperature_raises() -> None:
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(x, x, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(x, x, temperature=-1.0)


# ------------------------------------------------------------------ GAN


def test_gan_losses_at_known_probabilities() -> None:
    d_real, d_fake = torch.tensor([0.9]), torch.tensor([0.2])
    disc = -(math.log(0.9) + math.log(0.8))
    gen = -math.log(0.2)
    _close(gan_discriminator_loss_naive(d_real, d_fake), disc)
    _close(gan_generator_loss_naive(d_fake), gen)
    _close(gan_discriminator_loss(torch.logit(d_real), torch.logit(d_fake)), disc)
    _close(gan_generator_loss(torch.logit(d_fake)), gen)


def test_gan_logit_form_matches_naive_form() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(16, generator=g, dtype=torch.float64) * 4
    fake = torch.randn(12, generator=g, dtype=torch.float64) * 4
    stable_d = gan_discriminator_loss(real, fake)
    naive_d = gan_discriminator_loss_naive(torch.sigmoid(real), torch.sigmoid(fake))
    assert torch.isfinite(naive_d)
    _close(stable_d, float(naive_d), tol=1e-9)
    _close(gan_generator_loss(fake), float(gan_generator_loss_naive(torch.sigmoid(fake))), tol=1e-9)


def test_gan_logit_form_is_finite_at_extreme_logits() -> None:
    real, fake = torch.tensor([-100.0]), torch.tensor([100.0])
    assert torch.isinf(gan_discriminator_loss_naive(torch.sigmoid(real), torch.sigmoid(fake)))
    _close(gan_discriminator_loss(real, fake), 200.0)  # softplus(100) + softplus(100)
    fooled = torch.tensor([-100.0])
    assert torch.isinf(gan_generator_loss_naive(torch.sigmoid(fooled)))
    _close(gan_generator_loss(fooled), 100.0)


# ------------------------------------------------------------------ weighted_sum / supervised


def test_weighted_sum_equals_explicit_sum() -> None:
    losses = {"mlm": torch.tensor(2.0), "clm": torch.tensor(3.0), "aux": torch.tensor(10.0)}
    weights = {"mlm": 0.5, "clm": 2.0, "aux": 0.0}
    _close(weighted_sum(losses, weights), 0.5 * 2.0 + 2.0 * 3.0)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"a": 1.0}, "'b'"),
        ({"a": 1.0, "b": 1.0, "c": 1.0}, "'c'"),
        ({"a": 1.0, "b": -0.1}, "'b'.*>= 0"),
        ({"a": 1.0, "b": math.nan}, "'b'"),
        ({"a": 0.0, "b": 0.0}, "all weights are zero"),
    ],
)
def test_weighted_sum_rejects_bad_weights(weights: dict[str, float], match: str) -> None:
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    with pytest.raises(ValueError, match=match):
        weighted_sum(losses, weights)


def test_supervised_ce_by_hand() -> None:
    row = [1.0, 2.0, 3.0]
    logits = torch.tensor([row])
    labels = torch.tensor([0])
    _close(supervised_ce(logits, labels), -_log_softmax(row, 0))
    eps = 0.3
    q = [1 - eps + eps / 3, eps / 3, eps / 3]
    smoothed = -sum(q[c] * _log_softmax(row, c) for c in range(3))
    _close(supervised_ce(logits, labels, label_smoothing=eps), smoothed)
