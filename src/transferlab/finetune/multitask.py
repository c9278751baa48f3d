"""Weighting the losses of several tasks trained on one shared backbone.

Three schemes, all taking the stacked per-task losses ``L`` of shape ``(T,)``:

* fixed weights ``Σ λ_i L_i``;
* homoscedastic uncertainty weighting (Kendall, Gal & Cipolla 2018), learned ``s_i = log σ_i²``;
* GradNorm (Chen et al. 2018), learned weights ``w_i`` that equalise the tasks' gradient norms on
  a shared layer, scaled by how far behind each task's relative training rate is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["GradNorm", "UncertaintyWeighting", "fixed_weighted_loss"]


def _check_losses(losses: Tensor, num_tasks: int | None = None) -> None:
    if losses.dim() != 1:
        raise ValueError(f"expected per-task losses of shape (T,), got {tuple(losses.shape)}")
    if num_tasks is not None and losses.numel() != num_tasks:
        raise ValueError(f"expected {num_tasks} task losses, got {losses.numel()}")


def fixed_weighted_loss(losses: Tensor, weights: Sequence[float] | Tensor) -> Tensor:
    """``Σ_i λ_i L_i`` for per-task losses ``L`` of shape ``(T,)`` and ``T`` weights ``λ``."""
    _check_losses(losses)
    w = torch.as_tensor(weights, dtype=losses.dtype, device=losses.device)
    if w.shape != losses.shape:
        raise ValueError(f"{losses.numel()} task losses but weights of shape {tuple(w.shape)}")
    return (w * losses).sum()


class UncertaintyWeighting(nn.Module):
    """Homoscedastic-uncertainty task weighting (Kendall et al. 2018).

    Learns ``s_i = log σ_i²`` (the log keeps σ² positive and the optimisation unconstrained)::

        L = Σ_i ½ exp(−s_i) L_i + ½ s_i

    This is the Gaussian negative log-likelihood of a regression task with noise variance σ_i²
    when ``L_i`` is its mean squared error. Setting ``∂L/∂s_i = −½ e^{−s_i} L_i + ½ = 0`` gives the
    optimum ``σ_i² = e^{s_i} = L_i``: each task is weighted by the inverse of its own residual
    loss, so a noisy task cannot dominate, and the ``½ s_i`` term stops σ from growing without
    bound.

    Classification variant: for a softmax scaled by ``1/σ²`` the paper's approximation is
    ``exp(−s_i) L_i + ½ s_i`` (weight ``1/σ²`` instead of ``1/(2σ²)``), whose optimum is
    ``σ_i² = 2 L_i``. The module implements the regression form for every task; for a
    classification task pass ``2 · L_i``: ``½ e^{−s}(2 L_i) + ½ s`` is exactly the classification form.

    Put ``log_vars`` in the same optimiser as the model (no weight decay on it).
    """

    def __init__(self, num_tasks: int, init_log_var: float = 0.0) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.log_vars = nn.Parameter(torch.full((num_tasks,), float(init_log_var)))

    def forward(self, losses: Tensor) -> Tensor:
        _check_losses(losses, self.log_vars.numel())
        s = self.log_vars
        return (0.5 * torch.exp(-s) * losses + 0.5 * s).sum()

    @torch.no_grad()
    def weights(self) -> Tensor:
        """Effective weights ``½ exp(−s_i)`` currently multiplying each ``L_i`` (detached)."""
        return 0.5 * torch.exp(-self.log_vars.detach())

    @torch.no_grad()
    def variances(self) -> Tensor:
        """``σ_i² = exp(s_i)`` (detached)."""
        return torch.exp(self.log_vars.detach())


class GradNorm(nn.Module):
    """GradNorm task weighting (Chen, Badrinarayanan, Lee & Rabinovich 2018).

    Learnable weights ``w_i > 0`` with ``Σ w_i = T``. With a shared layer ``W`` (usually the last
    shared one) and ``L_i(0)`` the losses at the first call::

        G_i  = ‖∇_W (w_i L_i)‖ = w_i ‖∇_W L_i‖           gradient norm of the weighted task
        Ḡ    = mean_i G_i
        L̃_i  = L_i / L_i(0),   r_i = L̃_i / mean_j L̃_j   relative inverse training rate
        L_gn = Σ_i | G_i − Ḡ · r_i^α |                    target Ḡ · r_i^α held constant

    A task whose loss has fallen less (``r_i > 1``) is given a larger target gradient, hence a larger
    weight; ``α`` sets how strongly (0 equalises gradient norms only).

    The weights' gradient must come *only* from ``L_gn``; the model's gradient only from
    ``Σ w_i L_i`` with ``w`` treated as constant (otherwise the model loss would simply shrink
    every ``w_i`` to 0). Because ``G_i`` is linear in ``w_i``, the per-task norms ``‖∇_W L_i‖`` need
    no second-order graph. One training step::

        losses = torch.stack([loss_1, loss_2])         # (T,), still attached to the graph
        optimizer.zero_grad()                          # its params include gradnorm.weights
        gradnorm.backward_weights(losses, shared.weight)   # sets gradnorm.weights.grad
        gradnorm.weighted_loss(losses).backward()      # model grads; w detached here
        optimizer.step()
        gradnorm.renormalise()                         # back to w_i > 0, Σ w_i = T

    (Call ``backward_weights`` before ``backward()`` on the model loss: it reuses the graph.)
    """

    def __init__(self, num_tasks: int, alpha: float = 1.5, min_weight: float = 1e-3) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.alpha = float(alpha)
        self.min_weight = float(min_weight)
        self.weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.zeros(num_tasks))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def weighted_loss(self, losses: Tensor) -> Tensor:
        """Model objective ``Σ w_i L_i`` with ``w`` detached (no gradient reaches the weights)."""
        _check_losses(losses, self.num_tasks)
        return (self.weights.detach().to(losses.dtype) * losses).sum()

    def gradnorm_loss(self, losses: Tensor, shared_param: Tensor) -> Tensor:
        """``L_gn = Σ_i |G_i − Ḡ r_i^α|``; differentiable w.r.t. ``self.weights`` only.

        Records ``L_i(0)`` on the first call (or after :meth:`reset`). Keeps the graph of
        ``losses`` alive so the model loss can still be back-propagated afterwards.
        """
        _check_losses(losses, self.num_tasks)
        norms = []
        for i in range(self.num_tasks):
            (g,) = torch.autograd.grad(
                losses[i], shared_param, retain_graph=True, allow_unused=True
            )
            norms.append(torch.zeros((), device=losses.device) if g is None else g.norm())
        grad_norms = torch.stack(norms).detach()
        current = losses.detach()
        if not bool(self.initialised):
            self.initial_losses.copy_(current)
            self.initialised.fill_(True)
        G = self.weights * grad_norms.to(self.weights.dtype)
        ratio = current / self.initial_losses.clamp_min(torch.finfo(current.dtype).tiny)
        r = ratio / ratio.mean()
        target = (G.mean() * r.to(G.dtype) ** self.alpha).detach()
        return (G - target).abs().sum()

    def backward_weights(self, losses: Tensor, shared_param: Tensor) -> Tensor:
        """Accumulate ``∂L_gn/∂w`` into ``self.weights.grad``; return ``L_gn`` (detached)."""
        loss = self.gradnorm_loss(losses, shared_param)
        (grad,) = torch.autograd.grad(loss, self.weights)
        if self.weights.grad is None:
            self.weights.grad = grad
        else:
            self.weights.grad += grad
        return loss.detach()

    @torch.no_grad()
    def renormalise(self) -> None:
        """Project back to ``w_i ≥ min_weight`` and ``Σ w_i = T`` (call after each step)."""
        self.weights.clamp_(min=self.min_weight)
        self.weights.mul_(self.num_tasks / self.weights.sum())

    def reset(self) -> None:
        """Forget ``L_i(0)``; the next call records new initial losses."""
        self.initialised.fill_(False)
