"""Multi-task loss weighting: fixed weights, uncertainty weighting, GradNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferlab.finetune.multitask import GradNorm, UncertaintyWeighting, fixed_weighted_loss


@pytest.fixture(autouse=True)
def _one_thread():
    # the toy problems are tiny; extra threads only add contention on a shared machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _two_task_problem(n: int, noise: tuple[float, float], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    a, b = torch.randn(4, generator=gen), torch.randn(4, generator=gen)
    y1 = x @ a + noise[0] * torch.randn(n, generator=gen)
    y2 = x @ b + noise[1] * torch.randn(n, generator=gen)
    torch.manual_seed(seed)
    shared, head1, head2 = nn.Linear(4, 8), nn.Linear(8, 1), nn.Linear(8, 1)

    def losses() -> torch.Tensor:
        z = shared(x)
        return torch.stack(
            [
                ((head1(z).squeeze(1) - y1) ** 2).mean(),
                ((head2(z).squeeze(1) - y2) ** 2).mean(),
            ]
        )

    params = [*shared.parameters(), *head1.parameters(), *head2.parameters()]
    return shared, params, losses


def test_fixed_weighted_loss_is_exact_sum() -> None:
    losses = torch.tensor([0.25, 2.0, 3.5], requires_grad=True)
    # dyadic values: every product and sum is exact in float32, so == is fair
    total = fixed_weighted_loss(losses, [2.0, 0.5, 0.25])
    assert total.item() == 2.0 * 0.25 + 0.5 * 2.0 + 0.25 * 3.5
    total.backward()
    assert torch.equal(losses.grad, torch.tensor([2.0, 0.5, 0.25]))
    with pytest.raises(ValueError):
        fixed_weighted_loss(losses, [1.0, 1.0])


def test_uncertainty_weighting_formula() -> None:
    uw = UncertaintyWeighting(2)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.5, -1.0]))
    losses = torch.tensor([2.0, 3.0])
    s = torch.tensor([0.5, -1.0])
    expected = (0.5 * torch.exp(-s) * losses + 0.5 * s).sum()
    assert torch.allclose(uw(losses), expected)
    assert torch.allclose(uw.weights(), 0.5 * torch.exp(-s))


def test_uncertainty_weighting_learns_task_noise() -> None:
    _, params, losses = _two_task_problem(512, noise=(0.1, 1.0))
    uw = UncertaintyWeighting(2)
    opt = torch.optim.Adam([*params, *uw.parameters()], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        uw(losses()).backward()
        opt.step()
    with torch.no_grad():
        final = losses()
    sigma2 = uw.variances()
    # optimum of ½e^{-s}L + ½s is σ² = L; the residual MSEs sit near the noise variances
    assert torch.allclose(sigma2, final, rtol=0.2), (sigma2, final)
    assert final[0] == pytest.approx(0.01, rel=0.3) and final[1] == pytest.approx(1.0, rel=0.3)
    assert sigma2[1] > sigma2[0]
    assert uw.weights()[0] > uw.weights()[1]  # the precise task is up-weighted


def test_gradnorm_upweights_slower_task_and_keeps_simplex() -> None:
    # Task 2 has an irreducible noise floor, so its loss ratio L/L(0) falls much less.
    shared, params, losses = _two_task_problem(256, noise=(0.0, 2.0))
    gn = GradNorm(2, alpha=1.5)
    opt = torch.optim.Adam(params, lr=0.02)
    weight_opt = torch.optim.Adam([gn.weights], lr=0.02)
    for _ in range(150):
        task_losses = losses()
        opt.zero_grad()
        weight_opt.zero_grad()
        gn.backward_weights(task_losses, shared.weight)
        gn.weighted_loss(task_losses).backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
        opt.step()
        weight_opt.step()
        gn.renormalise()
        assert (gn.weights > 0).all()
        assert gn.weights.sum().item() == pytest.approx(2.0, abs=1e-5)
    with torch.no_grad():
        ratio = losses() / gn.initial_losses
    assert ratio[1] > 5 * ratio[0]  # premise: task 2 is the slower one
    assert gn.weights[1] > gn.weights[0] + 0.2


def test_gradnorm_weights_get_gradient_only_from_gradnorm_loss() -> None:
    shared, _, losses = _two_task_problem(32, noise=(0.0, 1.0))
    gn = GradNorm(2)
    task_losses = losses()
    gn.weighted_loss(task_losses).backward(retain_graph=True)
    assert gn.weights.grad is None  # the model loss never touches w
    value = gn.backward_weights(task_losses, shared.weight)
    assert gn.weights.grad is not None and value.item() >= 0.0
    # first call: r_i = 1, so L_gn = Σ|G_i − Ḡ| with G_i = w_i ‖∇_W L_i‖
    norms = torch.stack(
        [
            torch.autograd.grad(task_losses[i], shared.weight, retain_graph=True)[0].norm()
            for i in (0, 1)
        ]
    )
    assert value.item() == pytest.approx((norms - norms.mean()).abs().sum().item(), rel=1e-5)
