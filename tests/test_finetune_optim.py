"""Schedules, optimisers, layer-wise rates, L2 / L2-SP penalties and WiSE-FT interpolation."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn

from transferlab.finetune.regularizers import l2_penalty, l2_sp_penalty, snapshot_params
from transferlab.finetune.schedules import (
    build_optimizer,
    build_scheduler,
    cosine_with_warmup,
    exponential,
    layerwise_lr_groups,
    step_decay,
)
from transferlab.finetune.wise import StateDictMismatchError, interpolate_state_dicts
from transferlab.models.cnn import Classifier, ConvNet


def _lr_after(name: str, steps: int, base_lr: float = 0.5, **kwargs: object) -> float:
    """Group-0 lr of a real SGD + scheduler after ``steps`` optimiser/scheduler steps."""
    w = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=base_lr)
    sched = build_scheduler(opt, name, total_steps=kwargs.pop("total_steps", 100), **kwargs)
    for _ in range(steps):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


# ---------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("t", [0, 1, 10, 100])
def test_inverse_time_through_real_optimizer(t: int) -> None:
    eta0, lam = 0.5, 0.1
    assert _lr_after("inverse_time", t, base_lr=eta0, decay=lam) == pytest.approx(
        eta0 / (1 + lam * t), rel=1e-12
    )


def test_cosine_warmup_endpoints_and_midpoint() -> None:
    w, total = 10, 110
    assert _lr_after("cosine_with_warmup", 0, 1.0, warmup_steps=w, total_steps=total) == 0.0
    assert _lr_after("cosine_with_warmup", 5, 1.0, warmup_steps=w, total_steps=total) == 0.5
    assert _lr_after("cosine_with_warmup", w, 1.0, warmup_steps=w, total_steps=total) == 1.0
    assert cosine_with_warmup(60, w, total) == pytest.approx(0.5)
    assert cosine_with_warmup(total, w, total, min_factor=0.1) == pytest.approx(0.1)
    assert cosine_with_warmup(total + 50, w, total, min_factor=0.1) == pytest.approx(0.1)
    assert cosine_with_warmup(0, 0, total) == 1.0  # no warm-up starts at the peak


def test_step_and_exponential_decay() -> None:
    assert _lr_after("step_decay", 9, 1.0, step_size=10, gamma=0.1) == pytest.approx(1.0)
    assert _lr_after("step_decay", 10, 1.0, step_size=10, gamma=0.1) == pytest.approx(0.1)
    assert _lr_after("step_decay", 25, 1.0, step_size=10, gamma=0.1) == pytest.approx(0.01)
    assert _lr_after("exponential", 3, 2.0, gamma=0.5) == pytest.approx(0.25)
    assert step_decay(0, 5, 0.3) == 1.0
    assert exponential(2, 0.9) == pytest.approx(0.81)
    assert _lr_after("constant", 7, 0.3) == 0.3


def test_scheduler_pickles_and_rejects_unknown_names() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, "inverse_time", total_steps=10, decay=0.5)
    clone = pickle.loads(pickle.dumps(sched))  # a lambda here would raise PicklingError
    assert clone.lr_lambdas[0](2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="allowed: constant, cosine_with_warmup"):
        build_scheduler(opt, "linear", total_steps=10)
    with pytest.raises(ValueError, match="takes"):
        build_scheduler(opt, "inverse_time", total_steps=10, gamma=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        build_scheduler(opt, "inverse_time", total_steps=10, decay=-1.0)


def test_build_optimizer_kinds() -> None:
    params = [nn.Parameter(torch.zeros(3))]
    assert isinstance(build_optimizer(params, "adam", 1e-3, 0.0), torch.optim.Adam)
    assert isinstance(build_optimizer(params, "AdamW", 1e-3, 0.01), torch.optim.AdamW)
    sgd = build_optimizer(params, "sgd", 0.1, 0.0, momentum=0.8, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"] is True
    with pytest.raises(ValueError, match="allowed: adam, adamw, sgd"):
        build_optimizer(params, "rmsprop", 0.1, 0.0)


def test_layerwise_lr_groups() -> None:
    torch.manual_seed(0)
    model = Classifier(ConvNet(widths=(4, 4, 4, 4)), 3)
    for p in model.backbone.blocks[0].parameters():
        p.requires_grad_(False)
    groups = layerwise_lr_groups(model, base_lr=1.0, decay=0.5, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    assert groups[0]["name"] == "head" and groups[0]["lr"] == 1.0
    assert "block0" not in by_name  # fully frozen -> no group
    for i in (1, 2, 3):
        assert by_name[f"block{i}"]["lr"] == pytest.approx(0.5 ** (4 - i))
        assert {id(p) for p in by_name[f"block{i}"]["params"]} == {
            id(p) for p in model.backbone.blocks[i].parameters()
        }
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(g["weight_decay"] == 0.01 for g in groups)
    opt = build_optimizer(groups, "sgd", lr=123.0, weight_decay=0.0)  # groups keep their own lr
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]


# ---------------------------------------------------------------------------------- penalties


def test_l2_sp_gradient_matches_formula() -> None:
    torch.manual_seed(0)
    backbone = nn.Linear(3, 2)
    head = nn.Linear(2, 1)
    reference = snapshot_params(backbone)
    with torch.no_grad():  # move away from w0 by a known amount
        for p in backbone.parameters():
            p.add_(torch.randn_like(p))
    alpha, beta = 0.3, 0.7
    penalty = l2_sp_penalty(
        dict(backbone.named_parameters()), reference, head.parameters(), alpha, beta
    )
    penalty.backward()
    for name, p in backbone.named_parameters():
        assert torch.allclose(p.grad, alpha * (p.detach() - reference[name]), atol=1e-7)
        assert not torch.equal(p.detach(), reference[name])  # snapshot did not alias
    for p in head.parameters():
        assert torch.allclose(p.grad, beta * p.detach(), atol=1e-7)
    expected = 0.5 * alpha * sum(
        ((p - reference[n]) ** 2).sum() for n, p in backbone.named_parameters()
    ) + 0.5 * beta * sum((p**2).sum() for p in head.parameters())
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(KeyError):
        l2_sp_penalty({"other": backbone.weight}, reference, [], alpha, beta)


def _one_step(opt_name: str, weight_decay: float, explicit_l2: float) -> torch.Tensor:
    w = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    x = torch.tensor([0.5, 1.0, -1.0])
    opt_cls = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
    }[opt_name]
    opt = opt_cls([w], lr=0.1, weight_decay=weight_decay)
    loss = (w * x).sum() ** 2 + explicit_l2 * l2_penalty([w])
    loss.backward()
    opt.step()
    return w.detach().clone()


def test_weight_decay_vs_explicit_l2() -> None:
    lam = 0.1
    # Plain SGD: the L2 gradient λw is exactly what weight_decay adds to the gradient.
    assert torch.allclose(_one_step("sgd", lam, 0.0), _one_step("sgd", 0.0, lam), atol=1e-7)
    # Adam's own weight_decay is that same coupled L2 ...
    adam_l2 = _one_step("adam", 0.0, lam)
    assert torch.allclose(_one_step("adam", lam, 0.0), adam_l2, atol=1e-7)
    # ... but AdamW's decoupled decay is a different update.
    adamw = _one_step("adamw", lam, 0.0)
    assert not torch.allclose(adamw, adam_l2, atol=1e-4)
    # AdamW step 1: Adam's normalised step (≈ lr·sign(g)) plus the uniform shrink lr·λ·w.
    w0 = torch.tensor([1.0, -2.0, 3.0])
    grad_sign = torch.sign(
        2 * (w0 @ torch.tensor([0.5, 1.0, -1.0])) * torch.tensor([0.5, 1.0, -1.0])
    )
    expected = w0 * (1 - 0.1 * lam) - 0.1 * grad_sign
    assert torch.allclose(adamw, expected, atol=1e-5)
    assert l2_penalty([]).item() == 0.0


# ---------------------------------------------------------------------------------- WiSE-FT


def _state_dicts() -> tuple[dict, dict]:
    torch.manual_seed(0)
    m0 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    m1 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    m1.train()
    m1(torch.randn(8, 3))  # moves running stats and num_batches_tracked
    return m0.state_dict(), m1.state_dict()


def test_wise_endpoints_and_midpoint() -> None:
    sd0, sd1 = _state_dicts()
    at0 = interpolate_state_dicts(sd0, sd1, 0.0)
    at1 = interpolate_state_dicts(sd0, sd1, 1.0)
    mid = interpolate_state_dicts(sd0, sd1, 0.5)
    assert at0.keys() == sd0.keys() and at1.keys() == sd1.keys()
    for k in sd0:
        assert torch.equal(at0[k], sd0[k]) and torch.equal(at1[k], sd1[k])
        if sd0[k].is_floating_point():
            assert torch.allclose(mid[k], (sd0[k] + sd1[k]) / 2, atol=1e-7)
    assert mid["1.num_batches_tracked"] == sd1["1.num_batches_tracked"] == 1
    assert at0["1.num_batches_tracked"] == 0
    assert not torch.equal(mid["0.weight"], sd0["0.weight"])
    assert mid["0.weight"] is not sd1["0.weight"]  # new tensors, inputs untouched


def test_wise_mismatches_raise_one_line() -> None:
    sd0, sd1 = _state_dicts()
    missing = {k: v for k, v in sd1.items() if k != "0.bias"}
    with pytest.raises(StateDictMismatchError, match=r"only in sd0: \['0\.bias'\]") as info:
        interpolate_state_dicts(sd0, missing, 0.5)
    assert "\n" not in str(info.value)
    wrong_shape = {**sd1, "0.bias": torch.zeros(5)}
    with pytest.raises(ValueError, match=r"'0\.bias' has shape"):
        interpolate_state_dicts(sd0, wrong_shape, 0.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        interpolate_state_dicts(sd0, sd1, 1.5)
    assert math.isfinite(float(interpolate_state_dicts(sd0, sd1, 0.25)["0.weight"].sum()))
